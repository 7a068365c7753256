package ublk

// ublk_drv's uapi (include/uapi/linux/ublk_cmd.h), the part this package
// uses. Sizes, offsets and opcodes are golden-tested in uapi_test.go.

// Control commands on /dev/ublk-control, ioctl-encoded
// (_IOWR('u', nr, struct ublksrv_ctrl_cmd)) as kernels since 6.3 accept
// them. Kernels 6.0–6.2 know only the bare numbers (nr); legacy maps one to
// the other.
const (
	cmdAddDev    = 0xc0207504
	cmdDelDev    = 0xc0207505
	cmdStartDev  = 0xc0207506
	cmdStopDev   = 0xc0207507
	cmdSetParams = 0xc0207508

	cmdGetDevInfo = 0x80207502 // _IOR
)

// I/O commands on /dev/ublkcN (_IOWR('u', nr, struct ublksrv_io_cmd)).
const (
	ioFetchReq          = 0xc0107520
	ioCommitAndFetchReq = 0xc0107521
)

// legacy returns the pre-6.3 opcode of an ioctl-encoded command: its
// number, the low byte.
func legacy(op uint32) uint32 { return op & 0xff }

// Feature flags (ublksrv_ctrl_dev_info.flags).
const (
	featCmdIoctlEncode = 1 << 6
)

// Operations in ublksrv_io_desc.op_flags (bits 0-7) and flags (bits 8-31).
const (
	ioOpRead        = 0
	ioOpWrite       = 1
	ioOpFlush       = 2
	ioOpDiscard     = 3
	ioOpWriteSame   = 4
	ioOpWriteZeroes = 5

	ioFlagFUA = 1 << 13
)

// Results of a FETCH or COMMIT_AND_FETCH completion.
const (
	ioResOK    = 0
	ioResAbort = -19 // -ENODEV: the device is going away; do not fetch again
)

// cmdBufOffset is where the io descriptor arrays start in /dev/ublkcN's
// mmap space; queue q's array is at cmdBufOffset + q*maxCmdBufSize.
const (
	cmdBufOffset  = 0
	maxQueueDepth = 4096
)

// Device states (ublksrv_ctrl_dev_info.state).
const (
	devStateDead = 0
	devStateLive = 1
)

// Parameter types and attributes (ublk_params.types, ublk_param_basic.attrs).
const (
	paramTypeBasic   = 1 << 0
	paramTypeDiscard = 1 << 1

	attrReadOnly      = 1 << 0
	attrVolatileCache = 1 << 2
	attrFUA           = 1 << 3
)

// ctrlCmd is struct ublksrv_ctrl_cmd, carried in the SQE's cmd area.
type ctrlCmd struct {
	devID      uint32
	queueID    uint16
	len        uint16
	addr       uint64
	data       uint64
	devPathLen uint16
	_          uint16
	_          uint32
}

// devInfo is struct ublksrv_ctrl_dev_info.
type devInfo struct {
	nrHWQueues    uint16
	queueDepth    uint16
	state         uint16
	_             uint16
	maxIOBufBytes uint32
	devID         uint32
	ublksrvPID    int32
	_             uint32
	flags         uint64
	ublksrvFlags  uint64
	ownerUID      uint32
	ownerGID      uint32
	_             [2]uint64
}

// ioDesc is struct ublksrv_io_desc, one per tag in the array the driver
// shares read-only with the server.
type ioDesc struct {
	opFlags     uint32
	nrSectors   uint32
	startSector uint64
	addr        uint64
}

func (d ioDesc) op() uint8     { return uint8(d.opFlags) }
func (d ioDesc) fua() bool     { return d.opFlags&ioFlagFUA != 0 }
func (d ioDesc) off() uint64   { return d.startSector << 9 }
func (d ioDesc) bytes() uint64 { return uint64(d.nrSectors) << 9 }

// ioCmd is struct ublksrv_io_cmd, carried in the SQE's cmd area.
type ioCmd struct {
	qID    uint16
	tag    uint16
	result int32
	addr   uint64
}

type paramBasic struct {
	attrs            uint32
	logicalBSShift   uint8
	physicalBSShift  uint8
	ioOptShift       uint8
	ioMinShift       uint8
	maxSectors       uint32
	chunkSectors     uint32
	devSectors       uint64
	virtBoundaryMask uint64
}

type paramDiscard struct {
	discardAlignment      uint32
	discardGranularity    uint32
	maxDiscardSectors     uint32
	maxWriteZeroesSectors uint32
	maxDiscardSegments    uint16
	_                     uint16
}

// params is the head of struct ublk_params that every kernel with ublk
// knows: the header, basic and discard. Later kernels append more types;
// paramsLen tells the driver how much of its struct this is.
type params struct {
	len     uint32
	types   uint32
	basic   paramBasic
	discard paramDiscard
}

// paramsLen is the end of the discard parameters: sizeof(struct
// ublk_params) up to and including discard, without the tail padding that
// would spill into the next type (devt) of newer kernels.
const paramsLen = 60
