// Package checkpoint reads and writes MambaByte model checkpoints.
//
// # Overview
//
// Three on-disk layouts are understood, each a directory holding a
// config.json and one weight file:
//
//   - native: what Save writes. It is HF transformers' MambaForCausalLM
//     layout (config.json with HF field names plus "norm_type" and
//     "mambabyte_version", model.safetensors in float32), so an RMSNorm model
//     saved here loads in transformers unchanged.
//   - hf: a MambaForCausalLM directory written by transformers.
//   - mamba_ssm: a MambaLMHeadModel directory (the released MambaByte
//     checkpoints), usually with a pytorch_model.bin.
//
// Weights come from model.safetensors or, failing that, pytorch_model.bin (a
// torch.save zip archive). Either file may accompany either config layout.
//
// # Safety
//
// Every reader treats its input as hostile: sizes, offsets and indices are
// checked before use, allocations are bounded by the size of the input, and
// a malformed file yields an error naming the file and, where there is one,
// the tensor, never a panic. The pickle reader executes nothing: it
// interprets the handful of globals a state dict uses (OrderedDict and
// torch's tensor rebuild functions) in Go and refuses any other.
//
// # Invariants
//
// Tensors are returned as float32 in row-major order whatever their stored
// dtype. Writers are atomic: the destination is either the old file or the
// complete new one.
package checkpoint
