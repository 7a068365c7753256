package transports_test

import (
	"errors"
	"testing"
	"time"

	"github.com/georepl/georepl/transports"
)

func TestOptionsWithDefaults(t *testing.T) {
	cases := []struct {
		name    string
		in      transports.Options
		want    transports.Options
		invalid bool
	}{
		{"zero value", transports.Options{}, transports.Options{KeepAlive: transports.DefaultKeepAlive, IdleTimeout: transports.DefaultIdleTimeout}, false},
		{"both set", transports.Options{KeepAlive: time.Second, IdleTimeout: 3 * time.Second}, transports.Options{KeepAlive: time.Second, IdleTimeout: 3 * time.Second}, false},
		{"only keep-alive", transports.Options{KeepAlive: 10 * time.Second}, transports.Options{KeepAlive: 10 * time.Second, IdleTimeout: transports.DefaultIdleTimeout}, false},
		{"negative keep-alive", transports.Options{KeepAlive: -time.Second}, transports.Options{}, true},
		{"negative idle timeout", transports.Options{IdleTimeout: -time.Second}, transports.Options{}, true},
		{"keep-alive not below idle timeout", transports.Options{KeepAlive: time.Minute}, transports.Options{}, true},
		{"keep-alive equal to idle timeout", transports.Options{KeepAlive: time.Second, IdleTimeout: time.Second}, transports.Options{}, true},
	}
	for _, tc := range cases {
		got, err := tc.in.WithDefaults()
		switch {
		case tc.invalid && !errors.Is(err, transports.ErrInvalidOptions):
			t.Errorf("%s: WithDefaults(%+v) error = %v, want ErrInvalidOptions", tc.name, tc.in, err)
		case !tc.invalid && err != nil:
			t.Errorf("%s: WithDefaults(%+v): %v", tc.name, tc.in, err)
		case !tc.invalid && (got.KeepAlive != tc.want.KeepAlive || got.IdleTimeout != tc.want.IdleTimeout):
			t.Errorf("%s: WithDefaults(%+v) = %+v, want %+v", tc.name, tc.in, got, tc.want)
		}
	}
}
