"""The GGUF file format: a reader, a writer, and the block layouts of llama.cpp's tensor types.

GGUF is the single-file format of llama.cpp (spec: ggml/docs/gguf.md in the ggml
repository): a header, metadata as typed key-value pairs, one info entry per
tensor (name, dims, ggml type, offset), then the tensor data, aligned. Dims are
listed fastest-varying first (ggml's ne[0], ne[1], ...), the reverse of NumPy's
C order, so a Llama projection stored with dims [in, out] is the array [out, in]:

    TensorInfo.shape = tuple(reversed(TensorInfo.dims))
    byte offset of a tensor = data start (a multiple of general.alignment) + its offset

    >>> import os, tempfile, numpy as np
    >>> path = os.path.join(tempfile.mkdtemp(), "tiny.gguf")
    >>> w = np.linspace(-1, 1, 64, dtype=np.float32).reshape(2, 32)
    >>> write_gguf(path, {"general.name": "tiny"}, {"w": (quantize(w, Q8_0), Q8_0, w.shape)})
    >>> f = GGUFFile(path)
    >>> f.metadata["general.name"], f.tensors["w"].dims, f.tensors["w"].type_name
    ('tiny', (32, 2), 'Q8_0')
    >>> bool(np.abs(f.tensor("w") - w).max() <= 1 / 127)     # within one Q8_0 step d = max|x| / 127
    True

One module per idea, each importing only the ones above it:

    format         the file layout: magic, versions, metadata value types, the ggml type
                   table (GGML_TYPES), TensorInfo, GGUFError
    legacy_quants  GGUF's first block types Q8_0, Q4_0, Q4_1, Q5_0, Q5_1: blocks of 32, byte for
                   byte as llama.cpp writes them
    kquants        the k-quants Q4_K, Q5_K, Q6_K: super-blocks of 256 with quantised scales
    codecs         a tensor's bytes by ggml type: quantize(x, kind), dequantize(raw, kind, shape)
    reader         GGUFFile: the header parsed from an untrusted file, the data memory-mapped
    writer         write_gguf: every argument checked first, then the file written atomically

How untrusted files are read: docs/08_pretrained_model.md and `reader.Cursor`.
The quantisation methods that are not GGUF block types (NF4, GPTQ, AWQ, ...)
live in `tinytransformer.quant`, which builds on this package.

Does not handle: GGUF version 1 (pre-2023 files with 32-bit counts), the
i-quants (IQ*), Q2_K, Q3_K, big-endian files, and split (multi-file) models.
"""
from __future__ import annotations

from tinytransformer.gguf import kquants, legacy_quants
from tinytransformer.gguf.codecs import (DEQUANTIZERS, dequantize, dequantize_bf16, dequantize_f16, dequantize_f32,
                                         quantize)
from tinytransformer.gguf.format import (ARRAY, BF16, BLOCK_TYPES, BOOL, DEFAULT_ALIGNMENT, F16, F32, FLOAT32,
                                         FLOAT64, GGML_TYPES, GGUF_MAGIC, INT8, INT16, INT32, INT64,
                                         MAX_ARRAY_DEPTH, MAX_DIMS, MAX_ELEMENTS, MAX_NESTED_ARRAYS, Q4_0, Q4_1,
                                         Q4_K, Q5_0, Q5_1, Q5_K, Q6_K, Q8_0, STRING, SUPPORTED_VERSIONS, UINT8,
                                         UINT16, UINT32, UINT64, UNSUPPORTED_TYPES, VALUE_DTYPES, VALUE_TYPES,
                                         GGMLType, GGUFError, TensorInfo, ggml_type)
from tinytransformer.gguf.reader import GGUFFile
from tinytransformer.gguf.writer import MAX_WRITE_ALIGNMENT, write_gguf

__all__ = ["GGUFFile", "write_gguf", "quantize", "dequantize", "GGUFError", "TensorInfo", "GGMLType",
           "GGML_TYPES", "BLOCK_TYPES", "UNSUPPORTED_TYPES", "VALUE_TYPES", "VALUE_DTYPES", "DEQUANTIZERS",
           "dequantize_f32", "dequantize_f16", "dequantize_bf16", "ggml_type", "legacy_quants", "kquants",
           "GGUF_MAGIC", "SUPPORTED_VERSIONS", "DEFAULT_ALIGNMENT", "MAX_DIMS", "MAX_ARRAY_DEPTH", "MAX_ELEMENTS",
           "MAX_NESTED_ARRAYS", "MAX_WRITE_ALIGNMENT",
           "F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q4_K", "Q5_K", "Q6_K",
           "UINT8", "INT8", "UINT16", "INT16", "UINT32", "INT32", "FLOAT32", "BOOL", "STRING", "ARRAY", "UINT64",
           "INT64", "FLOAT64"]
