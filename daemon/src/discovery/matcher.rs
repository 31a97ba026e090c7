//! Deciding whether a process belongs to a service.

use crate::{config::Matcher, discovery::procfs::ProcessInfo};

impl Matcher {
    /// True when every matcher that is set agrees.
    pub fn matches(&self, p: &ProcessInfo) -> bool {
        if !self.pids.is_empty() && !self.pids.contains(&p.tgid) {
            return false;
        }
        if let Some(exe) = &self.exe
            && p.exe.as_deref().and_then(|e| e.to_str()) != Some(exe.as_str())
        {
            return false;
        }
        if let Some(re) = &self.cmdline
            && !re.is_match(&p.cmdline)
        {
            return false;
        }
        if let Some(prefix) = &self.cgroup
            && !p.cgroup.as_deref().is_some_and(|cg| under(cg, prefix))
        {
            return false;
        }
        if let Some(unit) = &self.systemd_unit
            && !p
                .cgroup
                .as_deref()
                .is_some_and(|cg| cg.split('/').any(|part| part == unit))
        {
            return false;
        }
        true
    }
}

/// Whether cgroup path `cg` is `prefix` or below it.
fn under(cg: &str, prefix: &str) -> bool {
    prefix.is_empty()
        || cg == prefix
        || (cg.starts_with(prefix) && cg.as_bytes().get(prefix.len()) == Some(&b'/'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use regex::Regex;

    fn proc(cmdline: &str, cgroup: &str) -> ProcessInfo {
        ProcessInfo {
            tgid: 42,
            exe: Some("/usr/bin/python3.11".into()),
            cmdline: cmdline.into(),
            cgroup: Some(cgroup.into()),
        }
    }

    #[test]
    fn all_set_matchers_must_agree() {
        let m = Matcher {
            exe: Some("/usr/bin/python3.11".into()),
            cmdline: Some(Regex::new("bentoml serve").unwrap()),
            ..Default::default()
        };
        assert!(m.matches(&proc("python -m bentoml serve svc", "/")));
        assert!(!m.matches(&proc("python other.py", "/")));
    }

    #[test]
    fn cgroup_prefix_respects_path_components() {
        let m = Matcher {
            cgroup: Some("/system.slice/llm.service".into()),
            ..Default::default()
        };
        assert!(m.matches(&proc("x", "/system.slice/llm.service")));
        assert!(m.matches(&proc("x", "/system.slice/llm.service/worker")));
        assert!(!m.matches(&proc("x", "/system.slice/llm.service2")));
    }

    #[test]
    fn systemd_unit_matches_a_path_component() {
        let m = Matcher {
            systemd_unit: Some("llm.service".into()),
            ..Default::default()
        };
        assert!(m.matches(&proc("x", "/system.slice/llm.service")));
        assert!(!m.matches(&proc("x", "/system.slice/other.service")));
    }

    #[test]
    fn pid_matcher() {
        let m = Matcher {
            pids: vec![42],
            ..Default::default()
        };
        assert!(m.matches(&proc("x", "/")));
        let m = Matcher {
            pids: vec![7],
            ..Default::default()
        };
        assert!(!m.matches(&proc("x", "/")));
    }
}
