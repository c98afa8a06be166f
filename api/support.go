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
	var errs []error
	p := s.Parallel
	if p.PP > 1 && p.Zero > 2 {
		errs = append(errs, &FieldError{Field: "parallel.zero", Value: p.Zero,
			Allowed: "ZeRO stage 3 does not run with pipeline parallelism yet: use zero 0–2 with pp > 1 (ZeRO 3 with pp 1)"})
	}
	if len(errs) == 0 {
		return nil
	}
	if source == "" {
		source = fmt.Sprintf("job %q", s.Name)
	}
	return &SpecError{Source: source, Errs: errs}
}
