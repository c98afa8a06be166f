package api

import "fmt"

// Supported returns nil when this Loom build can run spec, else a
// *SpecError (source names the spec) whose FieldErrors name each field
// that asks for what is not built yet. A spec can be valid (Validate) and
// still unsupported. It is the one check `loom run`, `loom submit`, the
// coordinator's Submit and launch.Local share, so a layout refused by one
// is refused by all, before any worker is waited for; relax it here as
// layouts land.
func Supported(s JobSpec, source string) error {
	// Every layout the spec can describe runs: dp × tp × pp with ZeRO
	// 0–3 under every schedule. Refusals go here, as FieldErrors, while a
	// new kind of layout is being built.
	var errs []error
	if len(errs) == 0 {
		return nil
	}
	if source == "" {
		source = fmt.Sprintf("job %q", s.Name)
	}
	return &SpecError{Source: source, Errs: errs}
}
