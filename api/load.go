package api

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"reflect"
	"sort"
	"strings"

	"gopkg.in/yaml.v3"
)

// ParseSpec decodes a YAML job spec over the defaults, rejects unknown keys
// and validates the result. source names the input in errors (a file name).
// Every problem is reported at once in a *SpecError.
func ParseSpec(src []byte, source string) (JobSpec, error) {
	spec := DefaultSpec()
	var root yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(src))
	if err := dec.Decode(&root); err != nil {
		if errors.Is(err, io.EOF) {
			return spec, &SpecError{Source: source, Errs: []error{errors.New("empty spec: expected a YAML mapping with model, data, parallel, train and checkpoint sections")}}
		}
		return spec, &SpecError{Source: source, Errs: []error{fmt.Errorf("malformed YAML: %w", err)}}
	}
	doc := &root
	if doc.Kind == yaml.DocumentNode && len(doc.Content) == 1 {
		doc = doc.Content[0]
	}
	if doc.Kind != yaml.MappingNode {
		return spec, &SpecError{Source: source, Errs: []error{fmt.Errorf("line %d: the spec must be a YAML mapping of sections (model, data, …)", doc.Line)}}
	}
	var errs []error
	checkKeys(doc, reflect.TypeOf(spec), "", &errs)
	if len(errs) > 0 {
		return spec, &SpecError{Source: source, Errs: errs}
	}
	if err := doc.Decode(&spec); err != nil {
		var te *yaml.TypeError
		if errors.As(err, &te) {
			for _, m := range te.Errors {
				errs = append(errs, errors.New(m))
			}
		} else {
			errs = append(errs, err)
		}
		return spec, &SpecError{Source: source, Errs: errs}
	}
	if err := spec.Validate(); err != nil {
		var se *SpecError
		if errors.As(err, &se) {
			for _, fe := range se.Errs {
				var f *FieldError
				if errors.As(fe, &f) {
					f.Line = lineOf(doc, f.Field)
				}
			}
			se.Source = source
		}
		return spec, err
	}
	return spec, nil
}

// LoadSpec reads and parses a YAML job spec file.
func LoadSpec(path string) (JobSpec, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return DefaultSpec(), fmt.Errorf("read job spec: %w", err)
	}
	return ParseSpec(b, path)
}

// checkKeys reports every mapping key that names no field of t, with the
// allowed keys, walking nested sections.
func checkKeys(n *yaml.Node, t reflect.Type, prefix string, errs *[]error) {
	if n.Kind != yaml.MappingNode || t.Kind() != reflect.Struct {
		return
	}
	fields := map[string]reflect.Type{}
	var names []string
	for i := 0; i < t.NumField(); i++ {
		tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]
		if tag == "" || tag == "-" {
			continue
		}
		fields[tag] = t.Field(i).Type
		names = append(names, tag)
	}
	sort.Strings(names)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		path := k.Value
		if prefix != "" {
			path = prefix + "." + k.Value
		}
		ft, ok := fields[k.Value]
		if !ok {
			*errs = append(*errs, &FieldError{Field: path, Value: "unknown key", Line: k.Line,
				Allowed: "allowed keys here: " + strings.Join(names, ", ")})
			continue
		}
		if ft.Kind() == reflect.Struct {
			if v.Kind != yaml.MappingNode {
				*errs = append(*errs, &FieldError{Field: path, Value: fmt.Sprintf("%q", v.Value), Line: v.Line,
					Allowed: "must be a mapping with keys: " + strings.Join(structKeys(ft), ", ")})
				continue
			}
			checkKeys(v, ft, path, errs)
		}
		if ft.Kind() == reflect.Slice && ft.Elem().Kind() == reflect.Struct && v.Kind == yaml.SequenceNode {
			for j, item := range v.Content {
				checkKeys(item, ft.Elem(), fmt.Sprintf("%s[%d]", path, j), errs)
			}
		}
	}
}

func structKeys(t reflect.Type) []string {
	var names []string
	for i := 0; i < t.NumField(); i++ {
		if tag := strings.Split(t.Field(i).Tag.Get("yaml"), ",")[0]; tag != "" && tag != "-" {
			names = append(names, tag)
		}
	}
	sort.Strings(names)
	return names
}

// lineOf returns the source line of a dotted field path, or 0 when the
// field was not written (a default).
func lineOf(n *yaml.Node, path string) int {
	for _, part := range strings.Split(path, ".") {
		if n.Kind != yaml.MappingNode {
			return 0
		}
		var next *yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			if n.Content[i].Value == part {
				next = n.Content[i+1]
				break
			}
		}
		if next == nil {
			return 0
		}
		n = next
	}
	return n.Line
}

// YAML renders the spec as YAML (all fields, defaults included).
func (s JobSpec) YAML() ([]byte, error) {
	type plain JobSpec
	return yaml.Marshal(plain(s))
}
