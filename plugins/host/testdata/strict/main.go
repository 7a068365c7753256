// Command strict is a test plugin: the built-in tcp transport, which
// accepts only the configuration {"greeting": "..."} and logs the greeting.
package main

import (
	"bytes"
	"encoding/json"
	"fmt"

	"github.com/georepl/georepl/plugins/sdk"
	"github.com/georepl/georepl/transports/tcp"
)

type strict struct{ *tcp.Transport }

func (strict) Configure(config json.RawMessage) error {
	var c struct{ Greeting string }
	dec := json.NewDecoder(bytes.NewReader(config))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&c); err != nil {
		return fmt.Errorf("config: %w", err)
	}
	sdk.Logger().Info("configured", "greeting", c.Greeting)
	return nil
}

func (strict) Version() string { return "strict-1.2.3" }

func main() { sdk.Serve(strict{tcp.New()}) }
