// Package version owns the Loom build version that workers and coordinators
// compare before they work together.
package version

// Version is the Loom release; set at link time with
// -ldflags "-X github.com/loomtrain/loom/internal/version.Version=...".
var Version = "0.1.0-dev"
