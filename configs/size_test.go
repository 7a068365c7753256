package configs

import (
	"errors"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want int64
	}{
		{"0", 0},
		{"4096", 4096},
		{"512B", 512},
		{"4K", 4 << 10},
		{"4KiB", 4 << 10},
		{"64MiB", 64 << 20},
		{"64M", 64 << 20},
		{"1.5GiB", 3 << 29},
		{"2G", 2 << 30},
		{"1TiB", 1 << 40},
		{"3T", 3 << 40},
		{"0.5KiB", 512},
		{"007KiB", 7 << 10},
		{"8388607TiB", 8388607 << 40},
	} {
		got, err := ParseSize(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
}

func TestParseSizeErrors(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string
	}{
		{"", "empty"},
		{"MiB", `"MiB": it must start with a decimal number`},
		{"-1KiB", "must start with a decimal number"},
		{"64MB", `unknown unit "MB"`},
		{"64mib", `unknown unit "mib"`},
		{"64 MiB", `unknown unit " MiB"`},
		{"4k", `unknown unit "k"`},
		{"1.2.3K", `"1.2.3" is not a decimal number`},
		{".5K", `".5" is not a decimal number`},
		{"5.K", `"5." is not a decimal number`},
		{"0.3KiB", "not a whole number of bytes"},
		{"1.5", "not a whole number of bytes"},
		{"8388608TiB", "larger than"},
		{"99999999999999999999", "larger than"},
	} {
		_, err := ParseSize(tc.in)
		if err == nil || !errors.Is(err, ErrInvalidSize) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseSize(%q) error = %v; want ErrInvalidSize mentioning %q", tc.in, err, tc.want)
		}
	}
}

func TestFormatSize(t *testing.T) {
	for _, tc := range []struct {
		in   int64
		want string
	}{
		{0, "0B"},
		{-5, "-5B"},
		{1023, "1023B"},
		{1024, "1KiB"},
		{1536, "1.5KiB"},
		{4 << 10, "4KiB"},
		{64 << 20, "64MiB"},
		{3 << 29, "1.5GiB"},
		{5<<30 + 5<<30/4, "6.25GiB"},
		{1<<30 + 1, "1073741825B"},
		{1<<20 - 1, "1048575B"},
		{1030, "1030B"},
		{10<<30 + 4<<10, "10485764KiB"},
		{2 << 40, "2TiB"},
		{5000 << 40, "5000TiB"},
	} {
		if got := FormatSize(tc.in); got != tc.want {
			t.Errorf("FormatSize(%d) = %q; want %q", tc.in, got, tc.want)
		}
	}
}

// TestFormatSizeReadsBack checks that FormatSize's output always parses back
// to the same count.
func TestFormatSizeReadsBack(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		unit := rapid.SampledFrom([]int64{1, 1 << 10, 1 << 20, 1 << 30, 1 << 40}).Draw(t, "unit")
		n := rapid.Int64Range(0, 1<<62/unit).Draw(t, "multiple")*unit + rapid.Int64Range(0, 3).Draw(t, "extra")
		text := FormatSize(n)
		back, err := ParseSize(text)
		if err != nil || back != n {
			t.Fatalf("ParseSize(FormatSize(%d) = %q) = %d, %v", n, text, back, err)
		}
	})
}
