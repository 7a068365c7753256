package configs

import (
	"errors"
	"fmt"
	"math"
	"math/big"
	"strconv"
	"strings"
)

// ErrInvalidSize is wrapped by every error ParseSize returns, so callers can
// tell a malformed size from other failures with errors.Is.
var ErrInvalidSize = errors.New("invalid size")

// sizeUnit is one accepted size suffix and the number of bytes it stands for.
type sizeUnit struct {
	suffix string
	bytes  int64
}

// sizeUnits lists every suffix ParseSize accepts. All of them are powers of
// 1024: the one-letter forms are shorthands for the IEC ones, as in DRBD's
// own configuration files. Decimal SI units (KB, MB, ...) are rejected on
// purpose because half of their readers take them for powers of 1024.
var sizeUnits = []sizeUnit{
	{"B", 1},
	{"K", 1 << 10}, {"KiB", 1 << 10},
	{"M", 1 << 20}, {"MiB", 1 << 20},
	{"G", 1 << 30}, {"GiB", 1 << 30},
	{"T", 1 << 40}, {"TiB", 1 << 40},
}

// formatUnits are the units FormatSize writes, largest first.
var formatUnits = []sizeUnit{
	{"TiB", 1 << 40},
	{"GiB", 1 << 30},
	{"MiB", 1 << 20},
	{"KiB", 1 << 10},
}

// ParseSize reads a byte count written as a decimal number followed by an
// optional unit, with nothing in between: "4096", "512B", "4KiB", "64MiB",
// "1.5GiB", "2T". Units are case-sensitive and all are powers of 1024: B,
// KiB, MiB, GiB, TiB, and the shorthands K, M, G, T. A number without unit
// counts bytes. A fraction is allowed as long as the result is a whole number
// of bytes ("0.5KiB" is 512, "0.3KiB" is an error).
//
// Every error wraps ErrInvalidSize and quotes the offending text.
func ParseSize(s string) (int64, error) {
	digits := 0
	for digits < len(s) && (s[digits] >= '0' && s[digits] <= '9' || s[digits] == '.') {
		digits++
	}
	number, unitText := s[:digits], s[digits:]
	if s == "" {
		return 0, fmt.Errorf("%w: empty string; write a number of bytes or a number with a unit such as \"64MiB\"", ErrInvalidSize)
	}
	if number == "" {
		return 0, fmt.Errorf("%w %q: it must start with a decimal number, as in \"64MiB\"", ErrInvalidSize, s)
	}
	whole, frac, hasDot := strings.Cut(number, ".")
	if whole == "" || (hasDot && (frac == "" || strings.Contains(frac, "."))) {
		return 0, fmt.Errorf("%w %q: %q is not a decimal number", ErrInvalidSize, s, number)
	}
	unit, ok := lookupSizeUnit(unitText)
	if !ok {
		return 0, fmt.Errorf("%w %q: unknown unit %q; use B, KiB, MiB, GiB or TiB (or K, M, G, T for the same powers of 1024; units are case-sensitive)", ErrInvalidSize, s, unitText)
	}
	// Exact arithmetic: (whole.frac) * unit must be an integer that fits.
	mantissa, _ := new(big.Int).SetString(whole+frac, 10)
	total := mantissa.Mul(mantissa, big.NewInt(unit))
	scale := new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(len(frac))), nil)
	bytes, rem := new(big.Int).QuoRem(total, scale, new(big.Int))
	if rem.Sign() != 0 {
		return 0, fmt.Errorf("%w %q: not a whole number of bytes", ErrInvalidSize, s)
	}
	if !bytes.IsInt64() {
		return 0, fmt.Errorf("%w %q: larger than %d bytes", ErrInvalidSize, s, int64(math.MaxInt64))
	}
	return bytes.Int64(), nil
}

func lookupSizeUnit(suffix string) (int64, bool) {
	if suffix == "" {
		return 1, true
	}
	for _, u := range sizeUnits {
		if u.suffix == suffix {
			return u.bytes, true
		}
	}
	return 0, false
}

// FormatSize writes n bytes exactly, in the largest IEC unit in which n is
// at least 1 and has at most two decimals: "512B", "4KiB", "64MiB",
// "1.5GiB", "1.25TiB"; a size without such a form is written in a smaller
// unit ("1030B", "10485764KiB"). ParseSize reads the result back as n.
// Negative counts are written in bytes.
func FormatSize(n int64) string {
	for _, u := range formatUnits {
		// n < 2^63 and u.bytes <= 2^40, so (n%u.bytes)*100 cannot overflow.
		if n < u.bytes || (n%u.bytes)*100%u.bytes != 0 {
			continue
		}
		text := strconv.FormatInt(n/u.bytes, 10)
		if hundredths := (n % u.bytes) * 100 / u.bytes; hundredths != 0 {
			text += strings.TrimRight(fmt.Sprintf(".%02d", hundredths), "0")
		}
		return text + u.suffix
	}
	return strconv.FormatInt(n, 10) + "B"
}
