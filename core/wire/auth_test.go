package wire

import (
	"bytes"
	"testing"
)

func TestAuthMAC(t *testing.T) {
	secret := []byte("correct horse battery staple")
	n1, n2 := sequence(1), sequence(200)
	binding := []byte("tls exporter output")

	// Node 1 proves itself to node 2, which checks with node 1 as prover.
	mac := AuthMAC(secret, "r0", n1, n2, 1, 2, binding)
	if len(mac) != AuthMACSize {
		t.Fatalf("MAC of %d bytes, want %d", len(mac), AuthMACSize)
	}
	if !CheckAuthMAC(secret, "r0", n1, n2, 1, 2, binding, mac) {
		t.Fatal("CheckAuthMAC refuses the MAC AuthMAC made")
	}

	// Node 2's proof to node 1 differs, so a MAC cannot be reflected.
	if bytes.Equal(mac, AuthMAC(secret, "r0", n2, n1, 2, 1, binding)) {
		t.Fatal("both directions give the same MAC")
	}

	refused := []struct {
		name string
		ok   bool
	}{
		{"other secret", CheckAuthMAC([]byte("wrong"), "r0", n1, n2, 1, 2, binding, mac)},
		{"nonces swapped", CheckAuthMAC(secret, "r0", n2, n1, 1, 2, binding, mac)},
		{"other verifier nonce", CheckAuthMAC(secret, "r0", n1, sequence(201), 1, 2, binding, mac)},
		{"ids swapped", CheckAuthMAC(secret, "r0", n1, n2, 2, 1, binding, mac)},
		{"other resource", CheckAuthMAC(secret, "r1", n1, n2, 1, 2, binding, mac)},
		{"resource name shifted into the label", CheckAuthMAC(secret, "r", n1, n2, 1, 2, binding, mac)},
		{"other prover", CheckAuthMAC(secret, "r0", n1, n2, 3, 2, binding, mac)},
		{"no binding", CheckAuthMAC(secret, "r0", n1, n2, 1, 2, nil, mac)},
		{"other binding", CheckAuthMAC(secret, "r0", n1, n2, 1, 2, []byte("another connection"), mac)},
		{"truncated MAC", CheckAuthMAC(secret, "r0", n1, n2, 1, 2, binding, mac[:16])},
		{"empty MAC", CheckAuthMAC(secret, "r0", n1, n2, 1, 2, binding, nil)},
	}
	for _, r := range refused {
		if r.ok {
			t.Errorf("%s: CheckAuthMAC accepted the MAC", r.name)
		}
	}
}
