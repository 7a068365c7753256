package wire_test

import (
	"bytes"
	"crypto/rand"
	"errors"
	"fmt"
	"io"

	"github.com/georepl/georepl/core/wire"
)

// A channel carries frames through a Writer on one side and a Reader on
// the other; here a bytes.Buffer stands for the connection.
func ExampleWriter() {
	var conn bytes.Buffer
	w := wire.NewWriter(&conn, wire.CompressionLZ4)
	block := bytes.Repeat([]byte("a compressible 4 KiB block. "), 4096/28+1)[:4096]
	for seq := uint64(1); seq <= 32; seq++ {
		f := wire.Frame{Type: wire.TypeData, Seq: seq, Epoch: 1, Offset: (seq - 1) * 4096, Length: 4096, Payload: block}
		if err := w.WriteFrame(&f); err != nil {
			fmt.Println(err)
			return
		}
	}
	if err := w.WriteFrame(&wire.Frame{Type: wire.TypeBarrier, Flags: wire.FlagFlush, Epoch: 1}); err != nil {
		fmt.Println(err)
		return
	}
	if err := w.Flush(); err != nil { // one Write call; 128 KiB of text: one compressed batch
		fmt.Println(err)
		return
	}

	r := wire.NewReader(&conn)
	var data int
	for {
		f, err := r.ReadFrame()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil { // a real connection is dropped here
			fmt.Println(err)
			return
		}
		if f.Type == wire.TypeData {
			data++ // f and f.Payload are ours to keep
		} else {
			fmt.Println("after", data, "writes:", f.Type, "epoch", f.Epoch, "flags", f.Flags)
		}
	}
	ws := w.Stats()
	fmt.Println("compressed batches:", ws.CompressedBatches, "- under a tenth on the wire:", ws.Bytes*10 < ws.RawBytes)
	// Output:
	// after 32 writes: barrier epoch 1 flags flush
	// compressed batches: 1 - under a tenth on the wire: true
}

// Each side proves it knows the resource's shared secret by MACing the
// nonce of the peer's Intro; the dialer proves itself first, and the
// listener answers with its proof only once the dialer's checked out.
func ExampleAuthMAC() {
	secret := []byte("the resource's shared secret")
	var nonce1, nonce2 [32]byte // sent in each side's Intro
	rand.Read(nonce1[:])
	rand.Read(nonce2[:])

	// Node 1, the dialer (whose Intro carried nonce1), proves itself to
	// node 2 for resource r0.
	proof := wire.AuthMAC(secret, "r0", nonce1, nonce2, 1, 2, nil)
	auth := wire.Frame{Type: wire.TypeAuth, Payload: proof}

	// Node 2 checks it with node 1 as the prover.
	fmt.Println("node 1 accepted:", wire.CheckAuthMAC(secret, "r0", nonce1, nonce2, 1, 2, nil, auth.Payload))
	// A proof reflected back to node 1 as if node 2 made it fails, and so
	// does the proof for another resource with the same secret.
	fmt.Println("reflection accepted:", wire.CheckAuthMAC(secret, "r0", nonce2, nonce1, 2, 1, nil, auth.Payload))
	fmt.Println("as a proof for r1:", wire.CheckAuthMAC(secret, "r1", nonce1, nonce2, 1, 2, nil, auth.Payload))
	// Output:
	// node 1 accepted: true
	// reflection accepted: false
	// as a proof for r1: false
}
