package bus

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
)

var (
	// ErrBadRequest: the request was malformed or broke a limit (code 400).
	ErrBadRequest = errors.New("natsroute: bad request")
	// ErrNoNodes: no node is available to take the request (code 503).
	ErrNoNodes = errors.New("natsroute: no node available")
	// ErrInternal: the router failed while answering (code 500).
	ErrInternal = errors.New("natsroute: internal error")

	// ErrInvalidNodeID is wrapped by errors about node ids.
	ErrInvalidNodeID = errors.New("natsroute: invalid node id")
	// ErrInvalidReport is wrapped by errors about health reports.
	ErrInvalidReport = errors.New("natsroute: invalid health report")
	// ErrInvalidPool is wrapped by errors about pool names and lists.
	ErrInvalidPool = errors.New("natsroute: invalid pool")
	// ErrInvalidDocument is wrapped by errors about ring documents.
	ErrInvalidDocument = errors.New("natsroute: invalid ring document")
	// ErrInvalidEntry is wrapped by errors about the values of the
	// one-key-per-member layout (pools.<pool>, members.<pool>.<node>).
	ErrInvalidEntry = errors.New("natsroute: invalid ring entry")
	// ErrInvalidFeedback is wrapped by errors about route.feedback bodies.
	ErrInvalidFeedback = errors.New("natsroute: invalid feedback")
	// ErrClosed is what Router.Ready reports after Close.
	ErrClosed = errors.New("natsroute: closed")
)

// Error codes on the wire (header Nats-Service-Error-Code and body "code").
const (
	CodeBadRequest = 400
	CodeNoNodes    = 503
	CodeInternal   = 500
)

// ServiceError is an error reply from a router. errors.Is matches it against
// ErrBadRequest, ErrNoNodes or ErrInternal according to its code.
type ServiceError struct {
	Code    int    // 400, 503 or 500
	Message string // the router's message
}

// Error is the router's message with the code, prefixed "natsroute: "
// once: a router's message already starts with it (it is the text of the
// router's own error), and the prefix used to appear twice
// ("natsroute: natsroute: no node available: ...").
func (e *ServiceError) Error() string {
	return fmt.Sprintf("%s%s (%d)", errPrefix, strings.TrimPrefix(e.Message, errPrefix), e.Code)
}

// errPrefix starts the text of every error of this package that is not
// about a bad argument to one of its functions (those say "bus: ").
const errPrefix = "natsroute: "

// Is maps the code onto the sentinel errors.
func (e *ServiceError) Is(target error) bool {
	return target == sentinelFor(e.Code)
}

func sentinelFor(code int) error {
	switch code {
	case CodeBadRequest:
		return ErrBadRequest
	case CodeNoNodes:
		return ErrNoNodes
	default:
		return ErrInternal
	}
}

// ErrorCode returns the wire code for an error produced while answering:
// CodeBadRequest, CodeNoNodes or CodeInternal.
func ErrorCode(err error) int {
	switch {
	case errors.Is(err, ErrBadRequest):
		return CodeBadRequest
	case errors.Is(err, ErrNoNodes):
		return CodeNoNodes
	}
	return CodeInternal
}

// ErrorBody is the body of an error reply.
type ErrorBody struct {
	Error string `json:"error" msgpack:"error"`
	Code  int    `json:"code" msgpack:"code"`
}

func parseCode(s string) int {
	c, err := strconv.Atoi(s)
	if err != nil {
		return CodeInternal
	}
	return c
}

// OversizeReply is in the message of every reply a router refuses as too
// large for the connection (a 400), so that a client can tell that error
// from other bad requests.
const OversizeReply = "over what NATS carries (max_payload):"
