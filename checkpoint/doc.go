// Package checkpoint owns what Loom writes to disk about a model: final
// models as Hugging Face LLaMA directories with the job spec beside them,
// the conversions between the job spec, the model and Hugging Face configs,
// and sharded training checkpoints (docs/checkpoints.md): per-rank shard and
// state files, the manifest written last, verification, retention, and
// reading any flat range back in any layout (resharding).
package checkpoint
