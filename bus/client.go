package bus

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
)

var (
	// ErrNoRouter: no router is subscribed to the request subject (NATS "no
	// responders"). errors.Is(err, nats.ErrNoResponders) holds too.
	ErrNoRouter = errors.New("natsroute: no router answered")
	// ErrTimeout: a router did not answer in time. errors.Is with
	// context.DeadlineExceeded or nats.ErrTimeout holds too, whichever fired.
	ErrTimeout = errors.New("natsroute: request timed out")
)

// DefaultClientTimeout bounds a request when the context has no deadline.
const DefaultClientTimeout = 2 * time.Second

// Client asks routers over NATS request/reply. It is safe for concurrent use
// and holds no resources beyond the connection it was given.
type Client struct {
	nc      *nats.Conn
	timeout time.Duration
	enc     Encoding
	subject string
}

// ClientOption configures a Client; invalid values make NewClient fail.
type ClientOption func(*Client) error

// WithTimeout bounds each request (default 2 s; a context deadline that
// comes sooner wins).
func WithTimeout(d time.Duration) ClientOption {
	return func(c *Client) error {
		if d <= 0 {
			return fmt.Errorf("bus: WithTimeout(%v): want > 0", d)
		}
		c.timeout = d
		return nil
	}
}

// WithEncoding sets the request encoding (default Msgpack).
func WithEncoding(e Encoding) ClientOption {
	return func(c *Client) error {
		if e != Msgpack && e != JSON {
			return fmt.Errorf("bus: WithEncoding(%d): want Msgpack or JSON", e)
		}
		c.enc = e
		return nil
	}
}

// WithSubject sends requests to another subject than route.request, for
// routers behind an import or a subject mapping.
func WithSubject(subject string) ClientOption {
	return func(c *Client) error {
		if subject == "" || !validSubject(subject) {
			return fmt.Errorf("bus: WithSubject(%q): not a valid subject without wildcards", subject)
		}
		c.subject = subject
		return nil
	}
}

func validSubject(s string) bool {
	for _, tok := range strings.Split(s, ".") {
		if tok == "" || tok == "*" || tok == ">" {
			return false
		}
		for i := 0; i < len(tok); i++ {
			if tok[i] <= ' ' {
				return false
			}
		}
	}
	return true
}

// NewClient returns a Client on nc.
func NewClient(nc *nats.Conn, opts ...ClientOption) (*Client, error) {
	if nc == nil {
		return nil, errors.New("bus: NewClient needs a NATS connection")
	}
	c := &Client{nc: nc, timeout: DefaultClientTimeout, enc: Msgpack, subject: SubjectRequest}
	for _, o := range opts {
		if err := o(c); err != nil {
			return nil, err
		}
	}
	return c, nil
}

// Select sends q to a router and returns its reply. An error reply becomes a
// *ServiceError (errors.Is matches ErrBadRequest, ErrNoNodes or ErrInternal);
// no router gives ErrNoRouter, no answer in time ErrTimeout.
func (c *Client) Select(ctx context.Context, q Request) (Reply, error) {
	body, err := c.enc.Marshal(&q)
	if err != nil {
		return Reply{}, fmt.Errorf("natsroute: encode request: %w", err)
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout) // a sooner deadline in ctx wins
	defer cancel()
	msg := &nats.Msg{Subject: c.subject, Data: body}
	m, err := c.nc.RequestMsgWithContext(ctx, msg)
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return Reply{}, fmt.Errorf("%w on %s: %w", ErrNoRouter, c.subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return Reply{}, fmt.Errorf("%w: %w", ErrTimeout, err)
	case err != nil:
		return Reply{}, fmt.Errorf("natsroute: request: %w", err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return Reply{}, &ServiceError{Code: parseCode(code), Message: m.Header.Get("Nats-Service-Error")}
	}
	var reply Reply
	if err := DetectEncoding(m.Data, m.Header).Unmarshal(m.Data, &reply); err != nil {
		return Reply{}, fmt.Errorf("natsroute: decode reply: %w", err)
	}
	return reply, nil
}

// Pick returns the node that owns key (ConsistentHash).
func (c *Client) Pick(ctx context.Context, key string) (string, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyConsistentHash, Key: key})
	return r.Node, err
}

// PickN returns up to n distinct nodes for key, primary first
// (ConsistentHash).
func (c *Client) PickN(ctx context.Context, key string, n int) ([]string, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyConsistentHash, Key: key, Count: n})
	if err != nil {
		return nil, err
	}
	if len(r.Nodes) == 0 {
		return []string{r.Node}, nil
	}
	return r.Nodes, nil
}

// PickHealthy returns a node chosen by health (ResourceAware), among
// candidates if any are given.
func (c *Client) PickHealthy(ctx context.Context, candidates ...string) (string, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyResourceAware, Candidates: candidates})
	return r.Node, err
}

// PickBatch returns the owner of each key, in order, from one ring revision
// (ConsistentHash).
func (c *Client) PickBatch(ctx context.Context, keys []string) ([]Result, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyConsistentHash, Keys: keys})
	return r.Results, err
}
