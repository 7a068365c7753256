package wire

import (
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"pgregory.net/rapid"
)

func helloGen() *rapid.Generator[Hello] {
	return rapid.Custom(func(t *rapid.T) Hello {
		h := Hello{
			Version:  rapid.Uint16().Draw(t, "version"),
			Features: rapid.Uint64().Draw(t, "features"),
			Resource: rapid.StringN(0, MaxResourceLen, MaxResourceLen).Draw(t, "resource"),
			From:     rapid.Uint8().Draw(t, "from"),
			To:       rapid.Uint8().Draw(t, "to"),
			Size:     rapid.Uint64().Draw(t, "size"),
			Gen:      genIDsGen().Draw(t, "gen"),
			Role:     rapid.Uint8().Draw(t, "role"),
			Disk:     rapid.Uint8().Draw(t, "disk"),
			SplitBrain: SplitBrain{
				Changes:  rapid.Uint64().Draw(t, "changes"),
				Promoted: rapid.Uint64().Draw(t, "promoted"),
				Policy:   rapid.Uint8().Draw(t, "policy"),
				Victim:   rapid.Uint8().Draw(t, "victim"),
				Flags:    rapid.Uint8().Draw(t, "flags"),
			},
			Term: rapid.Uint64().Draw(t, "term"),
		}
		copy(h.Nonce[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "nonce"))
		return h
	})
}

func introGen() *rapid.Generator[Intro] {
	return rapid.Custom(func(t *rapid.T) Intro {
		in := Intro{
			Version:  rapid.Uint16().Draw(t, "version"),
			Features: rapid.Uint64().Draw(t, "features"),
			Resource: rapid.StringN(0, MaxResourceLen, MaxResourceLen).Draw(t, "resource"),
			From:     rapid.Uint8().Draw(t, "from"),
			To:       rapid.Uint8().Draw(t, "to"),
		}
		copy(in.Nonce[:], rapid.SliceOfN(rapid.Byte(), 32, 32).Draw(t, "nonce"))
		return in
	})
}

func genIDsGen() *rapid.Generator[GenIDs] {
	return rapid.Custom(func(t *rapid.T) GenIDs {
		return GenIDs{
			Current: rapid.Uint64().Draw(t, "current"),
			Bitmap:  rapid.Uint64().Draw(t, "bitmap"),
			History: [2]uint64{rapid.Uint64().Draw(t, "history0"), rapid.Uint64().Draw(t, "history1")},
		}
	})
}

func stateGen() *rapid.Generator[State] {
	return rapid.Custom(func(t *rapid.T) State {
		return State{
			Role: rapid.Uint8().Draw(t, "role"),
			Disk: rapid.Uint8().Draw(t, "disk"),
			Repl: rapid.Uint8().Draw(t, "repl"),
			Gen:  genIDsGen().Draw(t, "gen"),
			Size: rapid.Uint64().Draw(t, "size"),
			Term: rapid.Uint64().Draw(t, "term"),
		}
	})
}

// binaryMessage is what Intro, Hello and State have in common.
type binaryMessage interface {
	MarshalBinary() ([]byte, error)
	UnmarshalBinary([]byte) error
}

// checkMessageRoundTrip checks that in survives encoding, with and without
// trailing bytes from a later version, and that every truncation of its
// encoding is ErrMalformed and leaves the target untouched.
func checkMessageRoundTrip[M any, P interface {
	*M
	binaryMessage
}](t *rapid.T, in M) {
	b, err := P(&in).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	trailer := rapid.SliceOfN(rapid.Byte(), 0, 16).Draw(t, "trailer")
	var out M
	if err := P(&out).UnmarshalBinary(append(b, trailer...)); err != nil {
		t.Fatalf("UnmarshalBinary with %d trailing bytes: %v", len(trailer), err)
	}
	if !equalMessages(in, out) {
		t.Fatalf("decoded %+v, want %+v", out, in)
	}
	cut := rapid.IntRange(0, len(b)-1).Draw(t, "cut")
	if h, ok := any(in).(Hello); ok && (cut == len(b)-termSize-splitBrainSize || cut == len(b)-termSize) {
		// An earlier version's hello: without the term, and maybe without
		// SplitBrain.
		var old Hello
		if err := old.UnmarshalBinary(b[:cut]); err != nil {
			t.Fatalf("UnmarshalBinary of a hello of %d of %d bytes: %v", cut, len(b), err)
		}
		h.Term = 0
		if cut < len(b)-termSize {
			h.SplitBrain = SplitBrain{}
		}
		if old != h {
			t.Fatalf("decoded %+v, want %+v", old, h)
		}
		return
	}
	if st, ok := any(in).(State); ok && cut == len(b)-termSize {
		// An earlier version's state: without the term.
		var old State
		if err := old.UnmarshalBinary(b[:cut]); err != nil {
			t.Fatalf("UnmarshalBinary of a state without the term: %v", err)
		}
		st.Term = 0
		if old != st {
			t.Fatalf("decoded %+v, want %+v", old, st)
		}
		return
	}
	if err := P(&out).UnmarshalBinary(b[:cut]); !errors.Is(err, ErrMalformed) {
		t.Fatalf("UnmarshalBinary of %d of %d bytes: %v, want ErrMalformed", cut, len(b), err)
	}
	if !equalMessages(in, out) {
		t.Fatalf("failed UnmarshalBinary changed the target to %+v", out)
	}
}

func equalMessages[M any](a, b M) bool {
	switch a := any(a).(type) {
	case Intro:
		return a == any(b).(Intro)
	case Hello:
		return a == any(b).(Hello)
	case State:
		return a == any(b).(State)
	}
	panic("unknown message type")
}

func TestHelloRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { checkMessageRoundTrip(t, helloGen().Draw(t, "hello")) })
}

func TestIntroRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { checkMessageRoundTrip(t, introGen().Draw(t, "intro")) })
}

// TestHelloBeginsWithIntro: a Hello's encoding starts with the encoding of
// the Intro made of its first fields.
func TestHelloBeginsWithIntro(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) {
		h := helloGen().Draw(t, "hello")
		in := Intro{Version: h.Version, Features: h.Features, Resource: h.Resource, From: h.From, To: h.To, Nonce: h.Nonce}
		hb, err := h.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		ib, err := in.MarshalBinary()
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(string(hb), string(ib)) {
			t.Fatalf("hello % x does not begin with its intro % x", hb, ib)
		}
	})
}

func TestStateRoundTrip(t *testing.T) {
	rapid.Check(t, func(t *rapid.T) { checkMessageRoundTrip(t, stateGen().Draw(t, "state")) })
}

func TestHelloResourceLimit(t *testing.T) {
	if _, err := (&Intro{Resource: strings.Repeat("r", MaxResourceLen+1)}).MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("Intro.MarshalBinary with a %d-byte name: %v, want ErrTooLarge", MaxResourceLen+1, err)
	}
	h := Hello{Resource: strings.Repeat("r", MaxResourceLen+1)}
	if _, err := h.MarshalBinary(); !errors.Is(err, ErrTooLarge) {
		t.Fatalf("MarshalBinary with a %d-byte name: %v, want ErrTooLarge", len(h.Resource), err)
	}
	h.Resource = h.Resource[:MaxResourceLen]
	b, err := h.MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	// A peer that claims a longer name is refused even if the bytes follow.
	binary.LittleEndian.PutUint16(b[10:], MaxResourceLen+1) // after version and features
	b = append(b, 'x')
	err = new(Hello).UnmarshalBinary(b)
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "resource name length 256") {
		t.Fatalf("UnmarshalBinary of a 256-byte name: %v, want ErrMalformed naming the length", err)
	}
}

// TestHelloOfEarlierVersion: a hello that ends after disk (written before
// the split-brain fields existed) decodes with a zero SplitBrain and term,
// one that ends after them (before the term existed) with a zero term, and
// one that ends inside a field is malformed.
func TestHelloOfEarlierVersion(t *testing.T) {
	b, err := (&goldenHello).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	var h Hello
	if err := h.UnmarshalBinary(b[:len(b)-termSize]); err != nil {
		t.Fatal(err)
	}
	want := goldenHello
	want.Term = 0
	if h != want {
		t.Fatalf("decoded %+v, want %+v", h, want)
	}
	if err := h.UnmarshalBinary(b[:len(b)-termSize-splitBrainSize]); err != nil {
		t.Fatal(err)
	}
	want.SplitBrain = SplitBrain{}
	if h != want {
		t.Fatalf("decoded %+v, want %+v", h, want)
	}
	err = new(Hello).UnmarshalBinary(b[:len(b)-1])
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "term") {
		t.Fatalf("hello ending inside the term: %v, want ErrMalformed naming the field", err)
	}
	err = new(Hello).UnmarshalBinary(b[:len(b)-termSize-splitBrainSize+3])
	if !errors.Is(err, ErrMalformed) || !strings.Contains(err.Error(), "split-brain changes") {
		t.Fatalf("hello ending inside the split-brain fields: %v, want ErrMalformed naming the field", err)
	}
}

func TestUnmarshalNamesTheField(t *testing.T) {
	b, err := (&goldenHello).MarshalBinary()
	if err != nil {
		t.Fatal(err)
	}
	err = new(Hello).UnmarshalBinary(b[:14])
	want := "wire: malformed: hello payload of 14 bytes ends inside field from at offset 14: need 1 bytes, have 0"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v\nwant %s", err, want)
	}
	err = new(State).UnmarshalBinary(make([]byte, 10))
	want = "wire: malformed: state payload of 10 bytes ends inside field gen current at offset 3: need 8 bytes, have 7"
	if err == nil || err.Error() != want {
		t.Fatalf("error %v\nwant %s", err, want)
	}
}
