package nbd

import (
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"strings"
	"testing"
)

// TestClientRefusesReplyToAnotherOption: a server that answers NBD_OPT_GO
// with a reply to another option is not followed (the reply names the
// option it answers, and a reply to what was not asked may describe
// another export).
func TestClientRefusesReplyToAnotherOption(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	go func() {
		defer server.Close()
		hello := binary.BigEndian.AppendUint64(nil, magicInit)
		hello = binary.BigEndian.AppendUint64(hello, magicOption)
		hello = binary.BigEndian.AppendUint16(hello, flagFixedNewstyle)
		if _, err := server.Write(hello); err != nil {
			return
		}
		// The client flags, then NBD_OPT_GO with its header and data.
		var head [4 + 16]byte
		if _, err := io.ReadFull(server, head[:]); err != nil {
			return
		}
		if _, err := io.CopyN(io.Discard, server, int64(binary.BigEndian.Uint32(head[16:]))); err != nil {
			return
		}
		var info [12]byte
		binary.BigEndian.PutUint16(info[0:], infoExport)
		binary.BigEndian.PutUint64(info[2:], 1<<20)
		reply := appendOptionReply(nil, optInfo, repInfo, info[:])
		reply = appendOptionReply(reply, optInfo, repAck, nil)
		server.Write(reply)
	}()
	_, err := Negotiate(context.Background(), client, "disk")
	if !errors.Is(err, ErrProtocol) || !strings.Contains(err.Error(), "option 6 where one to option 7") {
		t.Fatalf("negotiation answered for another option: %v, want a protocol error naming both options", err)
	}
}
