"""The CUDA C sources of tinytransformer's kernels, one .cu file per operation.

    flash_attention.cu    flash attention forward: v1 naive, v2 tiled fp32, v3 tensor cores fp16/bf16
    decode_attention.cu   decode over a paged KV cache: v1 block per (sequence, KV head), v2 split context,
                          v3 v2 from registers
    common.cuh            what both share: float conversions, -inf, the causal rule, the online-softmax update

Each file's top comment lists its versions and the NumPy reference it is checked against.
Installed, this folder is the package `tinytransformer.cuda_kernels` (setup.cfg's package_dir), so
that `tinytransformer.cuda` finds the sources and compiles them at run time (NVRTC, through CuPy).
There is no Python here: `tinytransformer.cuda` reads these files, and this module only marks the folder.
"""
