package nbd

import "strconv"

// Constants of the NBD protocol (fixed newstyle negotiation, simple
// replies), named as in the protocol specification.

// MaxPayload is the largest read or write one request may carry (32 MiB,
// the protocol's interoperable maximum). The server advertises it in
// NBD_INFO_BLOCK_SIZE with minimum 1 and preferred 4096, and closes a
// connection that sends a larger write; the Client splits larger transfers.
const MaxPayload = 32 << 20

// Magic numbers.
const (
	magicInit          = 0x4e42444d41474943 // "NBDMAGIC"
	magicOption        = 0x49484156454F5054 // "IHAVEOPT"
	magicOptionReply   = 0x3e889045565a9
	magicRequest       = 0x25609513
	magicSimpleReply   = 0x67446698
	exportNameZeroesSz = 124 // zero padding after an NBD_OPT_EXPORT_NAME reply
)

// Handshake flags (server) and client flags.
const (
	flagFixedNewstyle   = 1 << 0
	flagNoZeroes        = 1 << 1
	clientFixedNewstyle = 1 << 0
	clientNoZeroes      = 1 << 1
)

// Transmission flags.
const (
	flagHasFlags        = 1 << 0
	flagReadOnly        = 1 << 1
	flagSendFlush       = 1 << 2
	flagSendFUA         = 1 << 3
	flagSendTrim        = 1 << 5
	flagSendWriteZeroes = 1 << 6
	flagCanMultiConn    = 1 << 8
)

// Options.
const (
	optExportName      = 1
	optAbort           = 2
	optList            = 3
	optStartTLS        = 5
	optInfo            = 6
	optGo              = 7
	optStructuredReply = 8
)

// Option reply types.
const (
	repAck        = 1
	repServer     = 2
	repInfo       = 3
	repFlagError  = 1 << 31
	repErrUnsup   = repFlagError | 1
	repErrPolicy  = repFlagError | 2
	repErrInvalid = repFlagError | 3
	repErrTLSReqd = repFlagError | 5
	repErrUnknown = repFlagError | 6
	repErrTooBig  = repFlagError | 9
)

// Information types of NBD_REP_INFO.
const (
	infoExport    = 0
	infoBlockSize = 3
)

// Commands.
const (
	cmdRead        = 0
	cmdWrite       = 1
	cmdDisc        = 2
	cmdFlush       = 3
	cmdTrim        = 4
	cmdWriteZeroes = 6
)

// Command flags.
const (
	cmdFlagFUA    = 1 << 0
	cmdFlagNoHole = 1 << 1
)

// Sizes.
const (
	requestHeaderSize = 28
	replyHeaderSize   = 16
	// preferredBlockSize is advertised as the preferred block size.
	preferredBlockSize = 4096
	// maxOptionLength bounds an option's data; export names are at most
	// 4096 bytes, so anything longer is not a client worth serving.
	maxOptionLength = 64 << 10
)

// optionName names an option for log messages and errors.
func optionName(opt uint32) string {
	switch opt {
	case optExportName:
		return "NBD_OPT_EXPORT_NAME"
	case optAbort:
		return "NBD_OPT_ABORT"
	case optList:
		return "NBD_OPT_LIST"
	case optStartTLS:
		return "NBD_OPT_STARTTLS"
	case optInfo:
		return "NBD_OPT_INFO"
	case optGo:
		return "NBD_OPT_GO"
	case optStructuredReply:
		return "NBD_OPT_STRUCTURED_REPLY"
	}
	return "option " + strconv.FormatUint(uint64(opt), 10)
}

// commandName names a command for log messages and errors.
func commandName(cmd uint16) string {
	switch cmd {
	case cmdRead:
		return "read"
	case cmdWrite:
		return "write"
	case cmdDisc:
		return "disconnect"
	case cmdFlush:
		return "flush"
	case cmdTrim:
		return "trim"
	case cmdWriteZeroes:
		return "write-zeroes"
	}
	return "command " + strconv.FormatUint(uint64(cmd), 10)
}
