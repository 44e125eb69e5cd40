package whatisup

// Against a real gateway in test mode, when WHATISUP_TARGET (host:port) and WHATISUP_API_KEY (zpk_test_...) are
// set (tests/client_go.rs sets them); skipped otherwise.

import (
	"context"
	"os"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "github.com/whatisup/whatisup/clients/go/whatisuppb"
)

func TestAgainstGateway(t *testing.T) {
	target, key := os.Getenv("WHATISUP_TARGET"), os.Getenv("WHATISUP_API_KEY")
	if target == "" || key == "" {
		t.Skip("WHATISUP_TARGET and WHATISUP_API_KEY are not set")
	}
	c, err := NewClient(target, key)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()

	ch, err := c.Channels.CreateChannel(ctx, &pb.CreateChannelRequest{Name: "go-client"})
	if err != nil {
		t.Fatal(err)
	}
	if ch.GetStatus() != "pending" || ch.GetEngine() != "sandbox" {
		t.Fatalf("created %v", ch)
	}
	_, err = c.Channels.GetChannel(ctx, &pb.GetChannelRequest{Id: "ch_01JZZZZZZZZZZZZZZZZZZZZZZZ"})
	if status.Code(err) != codes.NotFound || ErrorCode(err) != "channel_not_found" {
		t.Fatalf("unknown channel: %v (code %q)", err, ErrorCode(err))
	}
	_, err = c.Channels.CreateChannel(ctx, &pb.CreateChannelRequest{Name: ""})
	if reason, md := ErrorDetails(err); reason != "invalid_request" || md["field"] != "name" {
		t.Fatalf("empty name: %v (%q %v)", err, reason, md)
	}

	// Pair with the simulated phone and see channel.connected and an inbound message through Subscribe.
	if _, err := c.Channels.GetQr(ctx, &pb.GetQrRequest{Id: ch.GetId()}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Sandbox.Scan(ctx, &pb.SandboxScanRequest{Id: ch.GetId(), PhoneNumber: "+15550004444"}); err != nil {
		t.Fatal(err)
	}
	sub, stop := context.WithCancel(ctx)
	defer stop()
	seen := make(chan *pb.Event, 64)
	done := make(chan error, 1)
	go func() {
		done <- c.Subscribe(sub, &pb.StreamEventsRequest{ChannelId: ch.GetId(), AfterCursor: "0"}, func(r *pb.StreamEventsResponse) error {
			seen <- r.GetEvent()
			return nil
		})
	}()
	inbound := false
	var last uint64
	for {
		select {
		case ev := <-seen:
			if ev.GetSequence() != last+1 {
				t.Fatalf("sequence %d after %d", ev.GetSequence(), last)
			}
			last = ev.GetSequence()
			switch ev.GetEvent() {
			case "channel.connected":
				if !inbound {
					inbound = true
					if _, err := c.Sandbox.Inbound(ctx, &pb.SandboxInboundRequest{Id: ch.GetId(), From: "+15550005555", Text: "hi Go"}); err != nil {
						t.Fatal(err)
					}
				}
			case "message.received":
				if got := ev.GetData().GetFields()["text"].GetStringValue(); got != "hi Go" {
					t.Fatalf("text %q", got)
				}
				stop()
				if err := <-done; err != nil {
					t.Fatal(err)
				}
				return
			}
		case err := <-done:
			t.Fatalf("subscription ended: %v", err)
		case <-ctx.Done():
			t.Fatal("no message.received in time")
		}
	}
}
