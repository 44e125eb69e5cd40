package whatisup

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// WebhookEvent is the envelope a delivery carries.
type WebhookEvent struct {
	Event      string                 `json:"event"`
	EventID    string                 `json:"event_id"`
	APIVersion string                 `json:"api_version"`
	ChannelID  string                 `json:"channel_id"`
	Sequence   uint64                 `json:"sequence"`
	OccurredAt time.Time              `json:"occurred_at"`
	Data       map[string]interface{} `json:"data"`
}

// ErrInvalidWebhook is wrapped by every verification failure (errors.Is).
var ErrInvalidWebhook = errors.New("whatisup: webhook verification failed")

// DefaultTolerance is how far webhook-timestamp may be from now, either way.
const DefaultTolerance = 5 * time.Minute

// A delivery carries one signature per active secret: a few, never many.
const maxSignatures = 16

// VerifyWebhook checks a delivery's Standard Webhooks signature: webhook-signature holds space-separated
// "v1,<base64 HMAC-SHA256 of "<webhook-id>.<webhook-timestamp>.<body>">" entries (two while a rotated secret
// overlaps), keyed with the base64 part of the endpoint's whsec_ secret, and webhook-timestamp must be within
// tolerance of now (0: DefaultTolerance). body must be the raw bytes as received. It returns the parsed event.
func VerifyWebhook(h http.Header, body []byte, secret string, tolerance time.Duration) (*WebhookEvent, error) {
	return verifyAt(h, body, secret, tolerance, time.Now())
}

func verifyAt(h http.Header, body []byte, secret string, tolerance time.Duration, now time.Time) (*WebhookEvent, error) {
	fail := func(why string) (*WebhookEvent, error) {
		return nil, fmt.Errorf("%w: %s", ErrInvalidWebhook, why)
	}
	id, ts, sigs := h.Get("webhook-id"), h.Get("webhook-timestamp"), h.Values("webhook-signature")
	if id == "" || ts == "" || len(sigs) == 0 {
		return fail("missing webhook-id, webhook-timestamp or webhook-signature")
	}
	sec, err := strconv.ParseInt(ts, 10, 64)
	if err != nil {
		return fail("webhook-timestamp is not unix seconds")
	}
	if tolerance <= 0 {
		tolerance = DefaultTolerance
	}
	if d := now.Sub(time.Unix(sec, 0)); d > tolerance || d < -tolerance {
		return fail("webhook-timestamp is outside the tolerance window")
	}
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil || len(key) == 0 {
		return fail("the signing secret is not whsec_<base64>")
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(id + "." + ts + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	ok, seen := false, 0
	for _, field := range sigs {
		for _, part := range strings.Fields(field) {
			if seen++; seen > maxSignatures {
				break
			}
			kv := strings.SplitN(part, ",", 2)
			if len(kv) != 2 || kv[0] != "v1" {
				continue
			}
			got, err := base64.StdEncoding.DecodeString(kv[1])
			// hmac.Equal is constant-time; every entry is compared.
			if err == nil && hmac.Equal(got, want) {
				ok = true
			}
		}
	}
	if !ok {
		return fail("no signature matches")
	}
	var ev WebhookEvent
	if err := json.Unmarshal(body, &ev); err != nil {
		return fail("the body is not the event JSON")
	}
	return &ev, nil
}
