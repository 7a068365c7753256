package nbdkernel

import (
	"errors"
	"fmt"
	"time"

	"github.com/mdlayher/genetlink"
	"github.com/mdlayher/netlink"
)

// Generic netlink family, commands and attributes of the kernel's nbd
// driver (include/uapi/linux/nbd-netlink.h, version 1).
const (
	familyName = "nbd"
	version    = 1

	cmdConnect     = 1
	cmdDisconnect  = 2
	cmdReconfigure = 3
	cmdLinkDead    = 4
	cmdStatus      = 5

	// mcastGroup carries NBD_CMD_LINK_DEAD: the kernel gave up on one of a
	// device's sockets.
	mcastGroup = "nbd_mc_group"

	attrIndex           = 1
	attrSizeBytes       = 2
	attrBlockSizeBytes  = 3
	attrTimeout         = 4
	attrServerFlags     = 5
	attrClientFlags     = 6
	attrSockets         = 7
	attrDeadConnTimeout = 8
	attrDeviceList      = 9
	attrBackend         = 10

	deviceItem      = 1
	deviceIndex     = 1
	deviceConnected = 2

	sockItem = 1
	sockFD   = 1
)

// Client flags (include/uapi/linux/nbd.h, NBD_CFLAG_*).
const (
	// ClientDestroyOnDisconnect removes the device when it disconnects.
	ClientDestroyOnDisconnect = 1 << 0
	// ClientDisconnectOnClose disconnects when the last opener closes it.
	ClientDisconnectOnClose = 1 << 1
)

// AnyDevice as Config.Index lets the kernel pick a free device (creating
// one if all are in use).
const AnyDevice = -1

// Config is what NBD_CMD_CONNECT and NBD_CMD_RECONFIGURE tell the kernel.
type Config struct {
	// Index is the device number N of /dev/nbdN, or AnyDevice.
	Index int
	// Size is the export's size in bytes.
	Size uint64
	// BlockSize is the logical block size: 512 to the page size, a power
	// of two. 0 means 512, as for kmod/ublk, so that one filesystem mounts
	// through either.
	BlockSize uint64
	// ServerFlags are the transmission flags the server sent (NBD_FLAG_*):
	// they tell the kernel whether to send flush, FUA and trim.
	ServerFlags uint16
	// ClientFlags are NBD_CFLAG_* (ClientDestroyOnDisconnect, ...).
	ClientFlags uint64
	// Timeout is how long a request may wait for its reply before the
	// kernel gives up on its socket: it shuts the socket down, announces
	// NBD_CMD_LINK_DEAD and queues the request for another socket, failing
	// it once DeadConnTimeout passes without one. 0 means never: a request
	// waits as long as the server takes, which a server that holds
	// requests (georepl's suspended I/O) needs. Whole seconds. Connect and
	// Reconfigure always send it, so a Reconfigure also clears a timeout
	// set before. With more than one socket the kernel gives up on a
	// socket whenever a request on it outlives the queue's io_timeout,
	// whatever Timeout says: a server that holds requests must hand the
	// kernel one socket.
	Timeout time.Duration
	// DeadConnTimeout is how long the kernel queues I/O after the last
	// socket died, waiting for NBD_CMD_RECONFIGURE, before failing it.
	// Whole seconds; 0 fails I/O at once.
	DeadConnTimeout time.Duration
	// Backend names the server (NBD_ATTR_BACKEND_IDENTIFIER, shown in
	// /sys/block/nbdN/backend), so that a restarted daemon finds the device
	// it had attached. Empty: none.
	Backend string
}

// Device is one nbd device as NBD_CMD_STATUS reports it.
type Device struct {
	Index     int
	Connected bool
}

// Path is the device node, /dev/nbdN.
func (d Device) Path() string { return fmt.Sprintf("/dev/nbd%d", d.Index) }

func (c Config) blockSize() uint64 {
	if c.BlockSize == 0 {
		return 512
	}
	return c.BlockSize
}

func seconds(d time.Duration) uint64 { return uint64((d + time.Second - 1) / time.Second) }

func encodeSockets(ae *netlink.AttributeEncoder, fds []int) {
	ae.Nested(attrSockets, func(nae *netlink.AttributeEncoder) error {
		for _, fd := range fds {
			nae.Nested(sockItem, func(item *netlink.AttributeEncoder) error {
				item.Uint32(sockFD, uint32(fd))
				return nil
			})
		}
		return nil
	})
}

// encodeConnect builds NBD_CMD_CONNECT's attributes.
func encodeConnect(cfg Config, fds []int) ([]byte, error) {
	if len(fds) == 0 {
		return nil, errors.New("nbdkernel: no sockets to connect")
	}
	ae := netlink.NewAttributeEncoder()
	if cfg.Index != AnyDevice {
		ae.Uint32(attrIndex, uint32(cfg.Index))
	}
	ae.Uint64(attrSizeBytes, cfg.Size)
	ae.Uint64(attrBlockSizeBytes, cfg.blockSize())
	ae.Uint64(attrTimeout, seconds(cfg.Timeout))
	ae.Uint64(attrServerFlags, uint64(cfg.ServerFlags))
	ae.Uint64(attrClientFlags, cfg.ClientFlags)
	if cfg.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(cfg.DeadConnTimeout))
	}
	if cfg.Backend != "" {
		ae.String(attrBackend, cfg.Backend)
	}
	encodeSockets(ae, fds)
	return ae.Encode()
}

// encodeReconfigure builds NBD_CMD_RECONFIGURE's attributes: new sockets
// for device index, replacing dead ones.
func encodeReconfigure(cfg Config, fds []int) ([]byte, error) {
	if cfg.Index < 0 {
		return nil, errors.New("nbdkernel: reconfigure needs a device index")
	}
	ae := netlink.NewAttributeEncoder()
	ae.Uint32(attrIndex, uint32(cfg.Index))
	ae.Uint64(attrTimeout, seconds(cfg.Timeout))
	if cfg.DeadConnTimeout > 0 {
		ae.Uint64(attrDeadConnTimeout, seconds(cfg.DeadConnTimeout))
	}
	if cfg.Backend != "" {
		ae.String(attrBackend, cfg.Backend)
	}
	if cfg.Size > 0 {
		// The kernel takes a new size with a reconfigure (since Linux
		// 5.3): an online resize.
		ae.Uint64(attrSizeBytes, cfg.Size)
		ae.Uint64(attrBlockSizeBytes, cfg.blockSize())
	}
	if len(fds) > 0 {
		encodeSockets(ae, fds)
	}
	return ae.Encode()
}

// encodeIndex builds the attributes of NBD_CMD_DISCONNECT and, with
// AnyDevice meaning every device, NBD_CMD_STATUS.
func encodeIndex(index int) ([]byte, error) {
	ae := netlink.NewAttributeEncoder()
	if index != AnyDevice {
		ae.Uint32(attrIndex, uint32(index))
	}
	return ae.Encode()
}

// decodeIndex reads NBD_ATTR_INDEX from NBD_CMD_CONNECT's reply.
func decodeIndex(b []byte) (int, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return 0, err
	}
	index := -1
	for ad.Next() {
		if ad.Type() == attrIndex {
			index = int(ad.Uint32())
		}
	}
	if err := ad.Err(); err != nil {
		return 0, err
	}
	if index < 0 {
		return 0, errors.New("nbdkernel: connect reply without a device index")
	}
	return index, nil
}

// decodeStatus reads NBD_CMD_STATUS's reply.
func decodeStatus(b []byte) ([]Device, error) {
	ad, err := netlink.NewAttributeDecoder(b)
	if err != nil {
		return nil, err
	}
	var devs []Device
	for ad.Next() {
		if ad.Type() != attrDeviceList {
			continue
		}
		ad.Nested(func(list *netlink.AttributeDecoder) error {
			for list.Next() {
				if list.Type() != deviceItem {
					continue
				}
				list.Nested(func(item *netlink.AttributeDecoder) error {
					d := Device{Index: -1}
					for item.Next() {
						switch item.Type() {
						case deviceIndex:
							d.Index = int(item.Uint32())
						case deviceConnected:
							d.Connected = item.Uint8() != 0
						}
					}
					if d.Index >= 0 {
						devs = append(devs, d)
					}
					return nil
				})
			}
			return nil
		})
	}
	return devs, ad.Err()
}

// Conn is a generic-netlink connection to the kernel's nbd driver. Its
// methods may be called from one goroutine at a time.
type Conn struct {
	c      *genetlink.Conn
	family uint16
}

// dialFamily loads the nbd module if it is missing (see LoadModule) and
// opens a generic-netlink connection that knows the nbd family.
func dialFamily() (*genetlink.Conn, genetlink.Family, error) {
	if err := LoadModule("nbd"); err != nil {
		return nil, genetlink.Family{}, err
	}
	c, err := genetlink.Dial(nil)
	if err != nil {
		return nil, genetlink.Family{}, fmt.Errorf("nbdkernel: generic netlink: %w", err)
	}
	fam, err := c.GetFamily(familyName)
	if err != nil {
		c.Close()
		return nil, genetlink.Family{}, fmt.Errorf("nbdkernel: netlink family %q (is the nbd module loaded?): %w", familyName, err)
	}
	return c, fam, nil
}

// Open loads the nbd module if it is missing (see LoadModule) and connects
// to its netlink family.
func Open() (*Conn, error) {
	c, fam, err := dialFamily()
	if err != nil {
		return nil, err
	}
	return &Conn{c: c, family: fam.ID}, nil
}

// Close closes the netlink connection; attached devices stay attached.
func (c *Conn) Close() error { return c.c.Close() }

// execute sends one command and returns its reply. Commands that reply
// (CONNECT, STATUS) are sent without NLM_F_ACK: the acknowledgement would
// arrive as a second datagram after the reply and be read as a stale answer
// by the next command. Errors come back either way.
func (c *Conn) execute(cmd uint8, attrs []byte) ([]genetlink.Message, error) {
	flags := netlink.Request
	if cmd != cmdConnect && cmd != cmdStatus {
		flags |= netlink.Acknowledge
	}
	return c.c.Execute(genetlink.Message{
		Header: genetlink.Header{Command: cmd, Version: version},
		Data:   attrs,
	}, c.family, flags)
}

// Connect attaches the already negotiated sockets fds to a device and
// returns its index. The kernel keeps its own references to the sockets.
func (c *Conn) Connect(cfg Config, fds []int) (int, error) {
	attrs, err := encodeConnect(cfg, fds)
	if err != nil {
		return 0, err
	}
	msgs, err := c.execute(cmdConnect, attrs)
	if err != nil {
		return 0, fmt.Errorf("nbdkernel: NBD_CMD_CONNECT: %w", err)
	}
	for _, m := range msgs {
		if index, err := decodeIndex(m.Data); err == nil {
			return index, nil
		}
	}
	if cfg.Index != AnyDevice {
		return cfg.Index, nil
	}
	return 0, errors.New("nbdkernel: NBD_CMD_CONNECT: the kernel did not say which device it used")
}

// Reconfigure hands new sockets to the connected device cfg.Index; the
// kernel replaces its dead sockets with them. A cfg.Size other than 0
// resizes the device (its readers see the new capacity at once).
func (c *Conn) Reconfigure(cfg Config, fds []int) error {
	attrs, err := encodeReconfigure(cfg, fds)
	if err != nil {
		return err
	}
	if _, err := c.execute(cmdReconfigure, attrs); err != nil {
		return fmt.Errorf("nbdkernel: NBD_CMD_RECONFIGURE of /dev/nbd%d: %w", cfg.Index, err)
	}
	return nil
}

// Disconnect detaches device index: the kernel sends NBD_CMD_DISC on its
// sockets, fails queued I/O and the device reads as empty (size 0).
func (c *Conn) Disconnect(index int) error {
	attrs, err := encodeIndex(index)
	if err != nil {
		return err
	}
	if _, err := c.execute(cmdDisconnect, attrs); err != nil {
		return fmt.Errorf("nbdkernel: NBD_CMD_DISCONNECT of /dev/nbd%d: %w", index, err)
	}
	return nil
}

// Status reports device index, or every device for AnyDevice.
func (c *Conn) Status(index int) ([]Device, error) {
	attrs, err := encodeIndex(index)
	if err != nil {
		return nil, err
	}
	msgs, err := c.execute(cmdStatus, attrs)
	if err != nil {
		return nil, fmt.Errorf("nbdkernel: NBD_CMD_STATUS: %w", err)
	}
	var devs []Device
	for _, m := range msgs {
		d, err := decodeStatus(m.Data)
		if err != nil {
			return nil, fmt.Errorf("nbdkernel: NBD_CMD_STATUS reply: %w", err)
		}
		devs = append(devs, d...)
	}
	return devs, nil
}

// LinkWatch receives the kernel's NBD_CMD_LINK_DEAD notices: a device lost
// a socket (its server closed it, a send failed, or a request outlived
// Config.Timeout), and the kernel queues the device's I/O until it gets a
// new one by NBD_CMD_RECONFIGURE or DeadConnTimeout passes.
type LinkWatch struct {
	c       *genetlink.Conn
	pending []int
}

// WatchLinks loads the nbd module if it is missing and joins the nbd
// family's multicast group. Notices sent before it returns are not seen.
func WatchLinks() (*LinkWatch, error) {
	c, fam, err := dialFamily()
	if err != nil {
		return nil, err
	}
	for _, g := range fam.Groups {
		if g.Name == mcastGroup {
			if err := c.JoinGroup(g.ID); err != nil {
				c.Close()
				return nil, fmt.Errorf("nbdkernel: joining multicast group %q: %w", mcastGroup, err)
			}
			return &LinkWatch{c: c}, nil
		}
	}
	c.Close()
	return nil, fmt.Errorf("nbdkernel: the nbd netlink family has no multicast group %q", mcastGroup)
}

// Next waits for a notice and returns the index of the device that lost a
// socket. It returns an error once Close was called.
func (w *LinkWatch) Next() (int, error) {
	for len(w.pending) == 0 {
		msgs, _, err := w.c.Receive()
		if err != nil {
			return 0, fmt.Errorf("nbdkernel: waiting for NBD_CMD_LINK_DEAD: %w", err)
		}
		w.pending = append(w.pending, linkDeadIndexes(msgs)...)
	}
	index := w.pending[0]
	w.pending = w.pending[1:]
	return index, nil
}

// Close ends the watch; a Next waiting returns an error.
func (w *LinkWatch) Close() error { return w.c.Close() }

// linkDeadIndexes returns the device indexes of the NBD_CMD_LINK_DEAD
// notices among msgs.
func linkDeadIndexes(msgs []genetlink.Message) []int {
	var indexes []int
	for _, m := range msgs {
		if m.Header.Command != cmdLinkDead {
			continue
		}
		if index, err := decodeIndex(m.Data); err == nil {
			indexes = append(indexes, index)
		}
	}
	return indexes
}
