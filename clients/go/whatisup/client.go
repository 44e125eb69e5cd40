// Package whatisup is a small idiomatic layer over the generated gRPC clients of the whatisup gateway
// (package whatisuppb): a connection with per-RPC bearer credentials, the contract's error code of a failed call,
// a resuming event subscription, and Standard Webhooks verification.
package whatisup

import (
	"context"
	"crypto/tls"
	"errors"
	"io"
	"math/rand"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protowire"

	pb "github.com/whatisup/whatisup/clients/go/whatisuppb"
)

// Client holds one connection to a gateway and a client per service. Every call carries the API key.
type Client struct {
	conn     *grpc.ClientConn
	Channels pb.ChannelServiceClient
	Messages pb.MessageServiceClient
	Media    pb.MediaServiceClient
	Events   pb.EventServiceClient
	Webhooks pb.WebhookServiceClient
	APIKeys  pb.ApiKeyServiceClient
	Sandbox  pb.SandboxServiceClient
}

// Option changes how NewClient connects.
type Option func(*options)

type options struct {
	tls  *tls.Config
	dial []grpc.DialOption
}

// WithTLS connects over TLS (a gateway behind a TLS proxy); without it the connection is plaintext HTTP/2 (h2c),
// as the gateway serves it.
func WithTLS(cfg *tls.Config) Option { return func(o *options) { o.tls = cfg } }

// WithDialOptions adds grpc.DialOptions (interceptors, keepalive, ...).
func WithDialOptions(d ...grpc.DialOption) Option {
	return func(o *options) { o.dial = append(o.dial, d...) }
}

// NewClient connects to target ("127.0.0.1:8080") with apiKey (zpk_live_... or zpk_test_...).
// The connection is established lazily; Close releases it.
func NewClient(target, apiKey string, opts ...Option) (*Client, error) {
	if apiKey == "" {
		return nil, errors.New("whatisup: an API key is required")
	}
	var o options
	for _, f := range opts {
		f(&o)
	}
	dial := []grpc.DialOption{grpc.WithPerRPCCredentials(bearer{key: apiKey, secure: o.tls != nil})}
	if o.tls != nil {
		dial = append(dial, grpc.WithTransportCredentials(credentials.NewTLS(o.tls)))
	} else {
		dial = append(dial, grpc.WithInsecure())
	}
	conn, err := grpc.Dial(target, append(dial, o.dial...)...)
	if err != nil {
		return nil, err
	}
	return &Client{
		conn:     conn,
		Channels: pb.NewChannelServiceClient(conn),
		Messages: pb.NewMessageServiceClient(conn),
		Media:    pb.NewMediaServiceClient(conn),
		Events:   pb.NewEventServiceClient(conn),
		Webhooks: pb.NewWebhookServiceClient(conn),
		APIKeys:  pb.NewApiKeyServiceClient(conn),
		Sandbox:  pb.NewSandboxServiceClient(conn),
	}, nil
}

// Conn is the underlying connection, for services this layer does not name.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// bearer sends `authorization: Bearer <key>` with every RPC.
type bearer struct {
	key    string
	secure bool
}

func (b bearer) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return map[string]string{"authorization": "Bearer " + b.key}, nil
}

// RequireTransportSecurity is false for the plaintext (h2c) connection the gateway serves on loopback or behind a
// TLS-terminating proxy; with WithTLS the key only travels encrypted.
func (b bearer) RequireTransportSecurity() bool { return b.secure }

const errorInfoType = "type.googleapis.com/google.rpc.ErrorInfo"

// ErrorCode is the contract's error code of a failed call ("channel_not_found", "not_connected", ...): the
// google.rpc.ErrorInfo reason the gateway puts in every gRPC error. Empty when err carries none.
func ErrorCode(err error) string {
	reason, _ := ErrorDetails(err)
	return reason
}

// ErrorDetails is the ErrorInfo reason and metadata of a failed call (e.g. metadata["field"] for invalid_request).
func ErrorDetails(err error) (reason string, metadata map[string]string) {
	st, ok := status.FromError(err)
	if !ok || st == nil {
		return "", nil
	}
	for _, d := range st.Proto().GetDetails() {
		if d.GetTypeUrl() != errorInfoType {
			continue
		}
		// ErrorInfo{reason = 1, domain = 2, map<string, string> metadata = 3}, decoded without googleapis' Go
		// packages.
		reason, metadata = decodeErrorInfo(d.GetValue())
		return reason, metadata
	}
	return "", nil
}

func decodeErrorInfo(b []byte) (string, map[string]string) {
	reason := ""
	md := map[string]string{}
	for len(b) > 0 {
		num, typ, n := protowire.ConsumeTag(b)
		if n < 0 {
			return reason, md
		}
		b = b[n:]
		if typ != protowire.BytesType {
			n = protowire.ConsumeFieldValue(num, typ, b)
			if n < 0 {
				return reason, md
			}
			b = b[n:]
			continue
		}
		v, n := protowire.ConsumeBytes(b)
		if n < 0 {
			return reason, md
		}
		b = b[n:]
		switch num {
		case 1:
			reason = string(v)
		case 3:
			var k, val string
			for len(v) > 0 {
				en, et, m := protowire.ConsumeTag(v)
				if m < 0 {
					break
				}
				v = v[m:]
				if et != protowire.BytesType {
					m = protowire.ConsumeFieldValue(en, et, v)
					if m < 0 {
						break
					}
					v = v[m:]
					continue
				}
				s, m := protowire.ConsumeBytes(v)
				if m < 0 {
					break
				}
				v = v[m:]
				if en == 1 {
					k = string(s)
				} else if en == 2 {
					val = string(s)
				}
			}
			md[k] = val
		}
	}
	return reason, md
}

// Subscribe streams events to handle and resumes after a dropped stream (network loss, gateway restart) from the
// last cursor it handed out, with capped exponential backoff: no gap, no duplicate. It returns when ctx ends
// (nil), when handle returns an error (that error), or on an error that asking again cannot fix (invalid
// request, not found, auth). req.AfterCursor is where it starts ("0": the whole retained log; "": live).
func (c *Client) Subscribe(ctx context.Context, req *pb.StreamEventsRequest, handle func(*pb.StreamEventsResponse) error) error {
	cursor := req.GetAfterCursor()
	backoff := 200 * time.Millisecond
	const maxBackoff = 5 * time.Second
	for {
		r := &pb.StreamEventsRequest{ChannelId: req.GetChannelId(), Events: req.GetEvents(), AfterCursor: cursor}
		stream, err := c.Events.StreamEvents(ctx, r)
		for err == nil {
			var item *pb.StreamEventsResponse
			item, err = stream.Recv()
			if err != nil {
				break
			}
			backoff = 200 * time.Millisecond
			cursor = item.GetCursor()
			if herr := handle(item); herr != nil {
				return herr
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if err != io.EOF && !resumable(err) {
			return err
		}
		jitter := time.Duration(rand.Int63n(int64(backoff)/5 + 1))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(backoff + jitter):
		}
		if backoff *= 2; backoff > maxBackoff {
			backoff = maxBackoff
		}
	}
}

func resumable(err error) bool {
	switch status.Code(err) {
	case codes.InvalidArgument, codes.NotFound, codes.Unauthenticated, codes.PermissionDenied,
		codes.FailedPrecondition, codes.Unimplemented, codes.OutOfRange:
		return false
	}
	return true
}
