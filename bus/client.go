package bus

import (
	"context"
	"crypto/rand"
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
	pool    string // "" is the default pool
	caller  string // names it in failure reports: the connection's name, or one of its own
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

// WithClientPool sends every request of the client to a pool (default: the
// default pool); a Request that names its own Pool keeps it.
func WithClientPool(pool string) ClientOption {
	return func(c *Client) error {
		if err := ValidatePoolName(pool); err != nil {
			return fmt.Errorf("bus: WithClientPool: %w", err)
		}
		c.pool = pool
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
	c := &Client{nc: nc, timeout: DefaultClientTimeout, enc: Msgpack, subject: SubjectRequest, caller: nc.Opts.Name}
	if c.caller == "" {
		// Routers count distinct callers before they eject a node: clients
		// without a name must not all count as one.
		c.caller = "client-" + strings.ToLower(rand.Text()[:12])
	}
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
	if q.Pool == "" {
		q.Pool = c.pool
	}
	body, err := c.enc.Marshal(&q)
	if err != nil {
		return Reply{}, fmt.Errorf("natsroute: encode request: %w", err)
	}
	m, err := c.request(ctx, c.subject, body)
	if err != nil {
		return Reply{}, err
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

// PickSpread returns the pick for a hot key: the healthiest (by
// ResourceAware's rules) of the key's first spread owners, and those owners
// in ring order (ConsistentHash).
func (c *Client) PickSpread(ctx context.Context, key string, spread int) (string, []string, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyConsistentHash, Key: key, Spread: spread})
	if err != nil {
		return "", nil, err
	}
	if len(r.Nodes) == 0 {
		return r.Node, []string{r.Node}, nil
	}
	return r.Node, r.Nodes, nil
}

// Pools lists the pools a router serves, with their member counts.
func (c *Client) Pools(ctx context.Context) ([]PoolInfo, error) {
	var st PoolsState
	if err := c.call(ctx, SubjectPools, PoolRequest{}, &st); err != nil {
		return nil, err
	}
	return st.Pools, nil
}

// NodesPage returns one page of a pool's nodes as a router sees them
// (route.nodes); pass the reply's Next as the next offset until it is 0.
func (c *Client) NodesPage(ctx context.Context, pool string, offset, limit int) (NodesState, error) {
	var st NodesState
	err := c.call(ctx, SubjectNodes, PoolRequest{Pool: pool, Offset: offset, Limit: limit}, &st)
	return st, err
}

// Nodes returns every node of a pool, paging through route.nodes. It halves
// the page size when a page would not fit in a NATS message (a server with
// a small max_payload).
func (c *Client) Nodes(ctx context.Context, pool string) (NodesState, error) {
	var all NodesState
	limit := DefaultNodesPage
	for offset := 0; ; {
		page, err := c.NodesPage(ctx, pool, offset, limit)
		if isOversize(err) && limit > 1 {
			limit /= 2
			continue
		}
		if err != nil {
			return NodesState{}, err
		}
		if offset == 0 {
			all = page
		} else {
			all.Nodes = append(all.Nodes, page.Nodes...)
		}
		if page.Next <= offset {
			all.Next = 0
			return all, nil
		}
		offset = page.Next
	}
}

// isOversize reports whether err is a router's refusal of a reply too large
// for NATS.
func isOversize(err error) bool {
	var se *ServiceError
	return errors.As(err, &se) && se.Code == CodeBadRequest && strings.Contains(se.Message, OversizeReply)
}

// Ring returns a pool's ring document and its revision (route.ring). A
// document too large for a NATS message comes back as a 400 naming the KV
// key to read instead.
func (c *Client) Ring(ctx context.Context, pool string) (RingState, error) {
	var st RingState
	err := c.call(ctx, SubjectRing, PoolRequest{Pool: pool}, &st)
	return st, err
}

// call sends body to subject and decodes the reply into out.
func (c *Client) call(ctx context.Context, subject string, body, out any) error {
	data, err := c.enc.Marshal(body)
	if err != nil {
		return fmt.Errorf("natsroute: encode request: %w", err)
	}
	m, err := c.request(ctx, subject, data)
	if err != nil {
		return err
	}
	if err := DetectEncoding(m.Data, m.Header).Unmarshal(m.Data, out); err != nil {
		return fmt.Errorf("natsroute: decode reply: %w", err)
	}
	return nil
}

// request sends a request and maps transport and service errors.
func (c *Client) request(ctx context.Context, subject string, data []byte) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, c.timeout) // a sooner deadline in ctx wins
	defer cancel()
	m, err := c.nc.RequestMsgWithContext(ctx, &nats.Msg{Subject: subject, Data: data})
	switch {
	case errors.Is(err, nats.ErrNoResponders):
		return nil, fmt.Errorf("%w on %s: %w", ErrNoRouter, subject, err)
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
		return nil, fmt.Errorf("%w on %s: %w", ErrTimeout, subject, err)
	case err != nil:
		return nil, fmt.Errorf("natsroute: request on %s: %w", subject, err)
	}
	if code := m.Header.Get("Nats-Service-Error-Code"); code != "" {
		return nil, &ServiceError{Code: parseCode(code), Message: m.Header.Get("Nats-Service-Error")}
	}
	return m, nil
}

// PickBatch returns the owner of each key, in order, from one ring revision
// (ConsistentHash).
func (c *Client) PickBatch(ctx context.Context, keys []string) ([]Result, error) {
	r, err := c.Select(ctx, Request{Strategy: StrategyConsistentHash, Keys: keys})
	return r.Results, err
}
