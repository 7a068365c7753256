package configs

import (
	"encoding/hex"
	"encoding/json"
	"path/filepath"
	"slices"

	"github.com/hashicorp/hcl/v2"
	"github.com/zclconf/go-cty/cty"
	ctyjson "github.com/zclconf/go-cty/cty/json"
)

// Plugin is a transport plugin block: a binary that provides the transport
// Name, which net.transport may then name like a built-in. Plugin blocks
// are top-level, as a daemon runs one process per plugin for all its
// resources:
//
//	plugin "tcp-fd" {
//	  path   = "/usr/lib/georepl/plugins/tcp-fd"
//	  sha256 = "3f1a08…"          # of the binary: sha256sum prints it
//	  args   = ["--verbose"]     # optional arguments of the binary
//	  config = { mtu = 9000 }    # optional, handed to the plugin as JSON
//	}
//
// The package checks the block's form; whether the binary exists, matches
// its checksum, speaks georepl's plugin protocol and accepts config is
// found when the daemon (or validate) starts it.
type Plugin struct {
	Name string
	// Path is the plugin's binary, an absolute path; Args its arguments.
	Path string
	Args []string
	// SHA256 is the binary's expected checksum.
	SHA256 []byte
	// Config is the config attribute as JSON; nil without one.
	Config json.RawMessage
	// DeclRange is where the block's header is in the source.
	DeclRange hcl.Range
}

var pluginSchema = &hcl.BodySchema{
	Attributes: []hcl.AttributeSchema{
		{Name: "path", Required: true},
		{Name: "sha256", Required: true},
		{Name: "args"},
		{Name: "config"},
	},
}

// Plugin returns the plugin block that provides transport name, or nil.
func (c *Config) Plugin(name string) *Plugin {
	for _, p := range c.Plugins {
		if p.Name == name {
			return p
		}
	}
	return nil
}

// plugin decodes a plugin block and makes its name a valid transport.
func (d *decoder) plugin(block *hcl.Block) {
	name := block.Labels[0]
	p := &Plugin{Name: name, DeclRange: block.DefRange}
	switch {
	case !resourceNameRE.MatchString(name):
		d.fail(block.LabelRanges[0], &block.DefRange, "Invalid plugin name",
			"Plugin name %q must be made of letters, digits, '_' and '-' only.", name)
	case d.config.Plugin(name) != nil:
		d.fail(block.LabelRanges[0], &block.DefRange, "Duplicate plugin",
			"Plugin %q is already defined at %s; each plugin is defined once.", name, where(d.config.Plugin(name).DeclRange))
	case slices.Contains(d.transports, name):
		d.fail(block.LabelRanges[0], &block.DefRange, "Plugin shadows a transport",
			"%q is already a transport (%s); give the plugin another name.", name, quoteList(d.transports))
	default:
		d.config.Plugins = append(d.config.Plugins, p)
		d.transports = append(slices.Clip(d.transports), name)
	}
	content, diags := block.Body.Content(pluginSchema)
	d.diags = append(d.diags, diags...)
	if attr := content.Attributes["path"]; attr != nil {
		if s, ok := d.path(attr); ok {
			if filepath.IsAbs(s) {
				p.Path = s
			} else {
				d.failAttr(attr, "Relative plugin path", "path = %q must be absolute: the daemon's working directory is not the configuration's.", s)
			}
		}
	}
	if attr := content.Attributes["sha256"]; attr != nil {
		if s, ok := d.str(attr); ok {
			sum, err := hex.DecodeString(s)
			if err != nil || len(sum) != 32 {
				d.failAttr(attr, "Invalid sha256", "sha256 must be the 64 hexadecimal digits of the binary's SHA-256 (as sha256sum prints them), got %q.", s)
			} else {
				p.SHA256 = sum
			}
		}
	}
	if attr := content.Attributes["args"]; attr != nil {
		if v, ok := d.value(attr, cty.List(cty.String)); ok {
			for _, a := range v.AsValueSlice() {
				p.Args = append(p.Args, a.AsString())
			}
		}
	}
	if attr := content.Attributes["config"]; attr != nil {
		v, diags := attr.Expr.Value(nil)
		d.diags = append(d.diags, diags...)
		switch {
		case diags.HasErrors():
		case !v.Type().IsObjectType() && !v.Type().IsMapType():
			d.failAttr(attr, "Invalid plugin config", "config must be an object, such as { key = \"value\" }; got %s.", v.Type().FriendlyName())
		case !v.IsWhollyKnown() || v.IsMarked():
			d.failAttr(attr, "Invalid value", "config must be a constant.")
		default:
			b, err := ctyjson.SimpleJSONValue{Value: v}.MarshalJSON()
			if err != nil {
				d.failAttr(attr, "Invalid plugin config", "config cannot be written as JSON: %v.", err)
			} else {
				p.Config = b
			}
		}
	}
}
