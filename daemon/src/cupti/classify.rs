//! Kernel names into a fixed set of classes, so a metric label says what
//! kind of work a kernel is without carrying its (unbounded) name: the
//! difference between an engine of fused kernels and a Python wrapper of
//! small ones shows as the mix of classes and the kernels per token.
//!
//! Rules are substrings of the lowercased name, tried in order; the first
//! class with a match wins. The order matters where names mix words: a
//! fused add + RMSNorm is a norm, NCCL's AllReduce is communication, not
//! a reduction, PyTorch's elementwise copy is a copy, and vLLM's
//! `reshape_and_cache_flash` writes the KV cache (a copy), not attention.

/// The `class` label values.
pub const CLASSES: [&str; 8] = [
    "gemm",
    "attention",
    "norm",
    "elementwise",
    "reduce",
    "copy",
    "communication",
    "other",
];

/// (class, substrings), in the order they are tried.
const RULES: &[(&str, &[&str])] = &[
    // Writes into the KV cache: copies, whatever attention words they carry.
    ("copy", &["reshape_and_cache", "memcpy", "memset"]),
    (
        "communication",
        &[
            "nccl",
            "allreduce",
            "all_reduce",
            "allgather",
            "all_gather",
            "reducescatter",
            "reduce_scatter",
            "alltoall",
            "cross_device",
        ],
    ),
    (
        "attention",
        &[
            "flash",
            "fmha",
            "attention",
            "attn",
            "mha_",
            "_mha",
            "xformers",
            "decode_kernel",
        ],
    ),
    (
        "gemm",
        &[
            "gemm",
            "gemv",
            "matmul",
            "cublas",
            "cutlass",
            "xmma",
            "s16816",
            "h16816",
            "wgmma",
            "splitk",
            "triton_tem_",
            "_mm_",
        ],
    ),
    (
        "norm",
        &[
            "rmsnorm",
            "rms_norm",
            "layernorm",
            "layer_norm",
            "groupnorm",
            "group_norm",
            "batch_norm",
            "batchnorm",
        ],
    ),
    (
        "copy",
        &[
            "copy",
            "fill_kernel",
            "transpose",
            "cat_array",
            "catarray",
            "index_select",
            "gather",
            "scatter",
        ],
    ),
    (
        "reduce",
        &[
            "reduce",
            "softmax",
            "argmax",
            "argmin",
            "topk",
            "cumsum",
            "scan",
            "triton_red_",
            "triton_per_",
            "sum_kernel",
            "max_kernel",
            "norm_kernel",
        ],
    ),
    (
        "elementwise",
        &[
            "elementwise",
            "vectorized",
            "unrolled",
            "pointwise",
            "triton_poi_",
            "activation",
            "silu",
            "gelu",
            "relu",
            "swiglu",
            "rotary",
            "rope",
            "add_kernel",
            "mul_kernel",
        ],
    ),
];

/// The class of a kernel by its (mangled or demangled) name.
pub fn class_of(name: &str) -> &'static str {
    let lower = name.to_ascii_lowercase();
    RULES
        .iter()
        .find(|(_, words)| words.iter().any(|w| lower.contains(w)))
        .map_or("other", |(class, _)| class)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn real_kernel_names_fall_in_their_class() {
        for (name, class) in [
            (
                "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1_execute_segment_k_off_kernel__5x_cublas",
                "gemm",
            ),
            (
                "ampere_bf16_s16816gemm_bf16_128x128_ldg8_f2f_stages_64x3_tn",
                "gemm",
            ),
            (
                "void cutlass::Kernel2<cutlass_80_tensorop_bf16_s16816gemm_relu_bf16_64x64_32x6_tn_align8>(Params)",
                "gemm",
            ),
            (
                "gemv2T_kernel_val<int, int, __nv_bfloat16, float, float, 128, 16, 4, 4, false, false>",
                "gemm",
            ),
            ("triton_tem_fused_mm_0", "gemm"),
            (
                "void flash_fwd_splitkv_kernel<Flash_fwd_kernel_traits<128, 64, 128, 4>, true>(Flash_fwd_params)",
                "attention",
            ),
            (
                "void vllm::paged_attention_v2_kernel<__nv_bfloat16, 128, 16, 128, 0, 512>",
                "attention",
            ),
            ("fmha_cutlassF_bf16_aligned_64x64_rf_sm80", "attention"),
            (
                "void vllm::fused_add_rms_norm_kernel<c10::BFloat16, 8>",
                "norm",
            ),
            (
                "void at::native::(anonymous namespace)::vectorized_layer_norm_kernel<float, float>",
                "norm",
            ),
            ("turbomind::invokeFusedAddBiasResidualRMSNorm", "norm"),
            (
                "void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>, at::detail::Array<char*, 3> >",
                "elementwise",
            ),
            (
                "void vllm::act_and_mul_kernel<c10::BFloat16, &vllm::silu_kernel>",
                "elementwise",
            ),
            (
                "void vllm::rotary_embedding_kernel<c10::BFloat16, true>",
                "elementwise",
            ),
            ("triton_poi_fused_add_mul_0", "elementwise"),
            (
                "void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::ArgMaxOps<float>, unsigned int, long, 4> >",
                "reduce",
            ),
            (
                "void at::native::(anonymous namespace)::cunn_SoftMaxForward<4, float>",
                "reduce",
            ),
            ("triton_red_fused_sum_1", "reduce"),
            (
                "void at::native::unrolled_elementwise_kernel<at::native::direct_copy_kernel_cuda(at::TensorIteratorBase&)::{lambda()#3}>",
                "copy",
            ),
            (
                "void at::native::(anonymous namespace)::CatArrayBatchedCopy<float, unsigned int, 2>",
                "copy",
            ),
            (
                "void vllm::reshape_and_cache_flash_kernel<__nv_bfloat16>",
                "copy",
            ),
            (
                "ncclDevKernel_AllReduce_Sum_bf16_RING_LL(ncclDevComm*, unsigned long, ncclWork*)",
                "communication",
            ),
            (
                "void vllm::cross_device_reduce_1stage<__nv_bfloat16, 2>",
                "communication",
            ),
            ("my_custom_kernel", "other"),
            ("", "other"),
        ] {
            assert_eq!(class_of(name), class, "{name}");
            assert!(CLASSES.contains(&class));
        }
    }

    #[test]
    fn every_rule_class_is_a_label_value() {
        for (class, words) in RULES {
            assert!(CLASSES.contains(class), "{class}");
            assert!(words.iter().all(|w| *w == w.to_ascii_lowercase()));
        }
    }
}
