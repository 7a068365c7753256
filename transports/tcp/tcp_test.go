package tcp_test

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/tcp"
	"github.com/georepl/georepl/transports/transporttest"
)

func TestConformance(t *testing.T) {
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return tcp.New(), "127.0.0.1:0"
	})
}

func BenchmarkTCP(b *testing.B) {
	transporttest.Bench(b, tcp.New(), "127.0.0.1:0")
}

func TestBadAddressesAndOptions(t *testing.T) {
	tr := tcp.New()
	ctx := context.Background()
	for _, addr := range []string{"", "localhost", "10.0.0.1:7789:1"} {
		if _, err := tr.Dial(ctx, addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Dial(%q): %v, want an error asking for host:port", addr, err)
		}
		if _, err := tr.Listen(addr, transports.Options{}); err == nil || !strings.Contains(err.Error(), "host:port") {
			t.Errorf("Listen(%q): %v, want an error asking for host:port", addr, err)
		}
	}
	bad := transports.Options{KeepAlive: time.Minute, IdleTimeout: time.Second}
	if _, err := tr.Listen("127.0.0.1:0", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Listen with KeepAlive > IdleTimeout: %v, want ErrInvalidOptions", err)
	}
	if _, err := tr.Dial(ctx, "127.0.0.1:1", bad); !errors.Is(err, transports.ErrInvalidOptions) {
		t.Errorf("Dial with KeepAlive > IdleTimeout: %v, want ErrInvalidOptions", err)
	}
}
