// Package checkpoint owns what Loom writes to disk about a model: final
// models as Hugging Face LLaMA directories with the job spec beside them, and
// the conversions between the job spec, the model and Hugging Face configs.
package checkpoint
