package host_test

import (
	"testing"

	"github.com/georepl/georepl/plugins/plugintest"
	"github.com/georepl/georepl/transports"
	"github.com/georepl/georepl/transports/transporttest"
)

const tcpFD = "github.com/georepl/georepl/plugins/tcp-fd"

func TestConformanceTCPFD(t *testing.T) {
	bin := plugintest.Build(t, tcpFD)
	transporttest.Run(t, func(t *testing.T) (transports.Transport, string) {
		return plugintest.Start(t, "tcp-fd", bin), "127.0.0.1:0"
	})
}
