package model

import (
	"errors"
	"strings"
	"testing"
)

func TestValidateID(t *testing.T) {
	good := strings.Repeat("ab12", 16)
	for _, tc := range []struct {
		name, id string
		ok       bool
	}{
		{"valid", good, true},
		{"empty", "", false},
		{"short", good[:12], false},
		{"long", good + "a", false},
		{"upper", strings.ToUpper(good), false},
		{"path", "../" + good[3:], false},
		{"nul", good[:63] + "\x00", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := ValidateID("network", tc.id)
			if (err == nil) != tc.ok {
				t.Fatalf("ValidateID(%q) = %v, want ok=%v", tc.id, err, tc.ok)
			}
			if err != nil && !errors.Is(err, ErrInvalidID) {
				t.Fatalf("error %v does not wrap ErrInvalidID", err)
			}
		})
	}
}

func TestValidateIfName(t *testing.T) {
	for _, tc := range []struct {
		name string
		ok   bool
	}{
		{"mn-0123456789ab", true},
		{"br0", true},
		{"a.b_c-d", true},
		{"", false},
		{"0123456789abcdef", false}, // 16 bytes
		{".", false},
		{"..", false},
		{"br/0", false},
		{"br:0", false},
		{"br 0", false},
		{"br\t0", false},
		{"br+", false},
		{"-br", false},
		{"!br", false},
		{"brü", false},
		{"br%d", false}, // the kernel would name it br0
		{"br%", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := ValidateIfName(tc.name); (err == nil) != tc.ok {
				t.Fatalf("ValidateIfName(%q) = %v, want ok=%v", tc.name, err, tc.ok)
			}
		})
	}
}
