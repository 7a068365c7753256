package main

import (
	"strings"
	"testing"
)

// TestLiveLinesRedrawsInPlace checks what a terminal receives: the first
// draw writes its lines, each later draw first moves the cursor up over
// as many lines as were drawn before, and every line clears what was on it.
func TestLiveLinesRedrawsInPlace(t *testing.T) {
	var out strings.Builder
	live := liveLines{out: &out}
	live.draw([]string{"r0 on alpha: Primary UpToDate", "  bravo 10%"})
	live.draw([]string{"r0 on alpha: Primary UpToDate", "  bravo 55%", "  dr 1%"})
	live.draw([]string{"done"})
	want := "\r\033[Kr0 on alpha: Primary UpToDate\n\r\033[K  bravo 10%\n" +
		"\033[2A\r\033[Kr0 on alpha: Primary UpToDate\n\r\033[K  bravo 55%\n\r\033[K  dr 1%\n" +
		"\033[3A\r\033[Kdone\n"
	if got := out.String(); got != want {
		t.Errorf("terminal got %q, want %q", got, want)
	}
}
