// Package headers changes HTTP header fields as a route's request and response header modifiers say, with the
// Gateway API's semantics: remove the named fields, then set (replace every value of) the named fields, then add
// (append) values.
package headers

import (
	"net/http"
	"net/textproto"
	"strings"
)

// Field is one header field to set or add.
type Field struct {
	// Name is the field name in canonical form (textproto.CanonicalMIMEHeaderKey).
	Name string
	// Value is the field value.
	Value string
}

// Modifier is a compiled header modifier. It is immutable and safe for concurrent use; a nil *Modifier changes
// nothing.
type Modifier struct {
	// Set replaces each named field's values with one value, after Remove.
	Set []Field
	// Add appends a value to each named field, after Set.
	Add []Field
	// Remove deletes the named fields (canonical names), first.
	Remove []string

	drop []string // lowercase names whose existing fields are not kept: Remove and Set
}

// New compiles a modifier; names are case-insensitive. It returns nil when there is nothing to change.
func New(set, add []Field, remove []string) *Modifier {
	if len(set) == 0 && len(add) == 0 && len(remove) == 0 {
		return nil
	}
	m := &Modifier{}
	for _, f := range set {
		f.Name = textproto.CanonicalMIMEHeaderKey(f.Name)
		m.Set = append(m.Set, f)
		m.drop = append(m.drop, strings.ToLower(f.Name))
	}
	for _, f := range add {
		f.Name = textproto.CanonicalMIMEHeaderKey(f.Name)
		m.Add = append(m.Add, f)
	}
	for _, name := range remove {
		m.Remove = append(m.Remove, textproto.CanonicalMIMEHeaderKey(name))
		m.drop = append(m.drop, strings.ToLower(name))
	}
	return m
}

// Apply changes h in place: Remove, then Set, then Add.
func (m *Modifier) Apply(h http.Header) {
	if m == nil {
		return
	}
	for _, name := range m.Remove {
		delete(h, name)
	}
	for _, f := range m.Set {
		h[f.Name] = []string{f.Value}
	}
	for _, f := range m.Add {
		h[f.Name] = append(h[f.Name], f.Value)
	}
}

// Drops reports whether a field named name (any case) present in a message is left out by the modifier: it is
// removed or set. A relay that writes fields itself skips those, then writes Set and Add.
func (m *Modifier) Drops(name []byte) bool {
	if m == nil {
		return false
	}
	for _, d := range m.drop {
		if equalFold(name, d) {
			return true
		}
	}
	return false
}

// equalFold compares b with the lowercase ASCII string s, ignoring b's case.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != s[i] {
			return false
		}
	}
	return true
}
