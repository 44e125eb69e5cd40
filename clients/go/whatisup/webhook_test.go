package whatisup

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"net/http"
	"strconv"
	"testing"
	"time"
)

var (
	key    = bytes.Repeat([]byte{1}, 32)
	secret = "whsec_" + base64.StdEncoding.EncodeToString(key)
	now    = time.Unix(1_700_000_000, 0)
	body   = []byte(`{"event":"message.received","event_id":"evt_1","channel_id":"ch_1","sequence":7,"occurred_at":"2026-11-26T12:00:00.123Z","data":{"text":"é"}}`)
)

func sign(k []byte, id string, ts int64, b []byte) string {
	m := hmac.New(sha256.New, k)
	m.Write([]byte(id + "." + strconv.FormatInt(ts, 10) + "."))
	m.Write(b)
	return base64.StdEncoding.EncodeToString(m.Sum(nil))
}

func headers(sig string, ts int64) http.Header {
	h := http.Header{}
	h.Set("webhook-id", "evt_1")
	h.Set("webhook-timestamp", strconv.FormatInt(ts, 10))
	h.Set("webhook-signature", sig)
	return h
}

func TestVerifyWebhookAccepts(t *testing.T) {
	ev, err := verifyAt(headers("v1,"+sign(key, "evt_1", now.Unix(), body), now.Unix()), body, secret, 0, now)
	if err != nil {
		t.Fatal(err)
	}
	if ev.Event != "message.received" || ev.EventID != "evt_1" || ev.Sequence != 7 || ev.Data["text"] != "é" {
		t.Fatalf("parsed %+v", ev)
	}
	// One of several entries matching is enough (a rotated secret overlaps); unknown versions are skipped.
	other := bytes.Repeat([]byte{2}, 32)
	sig := "v2,abc v1," + sign(other, "evt_1", now.Unix(), body) + " v1," + sign(key, "evt_1", now.Unix(), body)
	if _, err := verifyAt(headers(sig, now.Unix()), body, secret, 0, now); err != nil {
		t.Fatal(err)
	}
}

func TestVerifyWebhookRefuses(t *testing.T) {
	good := "v1," + sign(key, "evt_1", now.Unix(), body)
	otherID := headers(good, now.Unix())
	otherID.Set("webhook-id", "evt_2")
	missing := headers(good, now.Unix())
	missing.Del("webhook-timestamp")
	cases := map[string]struct {
		h    http.Header
		body []byte
		sec  string
	}{
		"tampered body":    {headers(good, now.Unix()), bytes.Replace(body, []byte("é"), []byte("e"), 1), secret},
		"other id":         {otherID, body, secret},
		"stale":            {headers("v1,"+sign(key, "evt_1", now.Unix()-301, body), now.Unix()-301), body, secret},
		"future":           {headers("v1,"+sign(key, "evt_1", now.Unix()+301, body), now.Unix()+301), body, secret},
		"missing header":   {missing, body, secret},
		"wrong secret":     {headers(good, now.Unix()), body, "whsec_" + base64.StdEncoding.EncodeToString(bytes.Repeat([]byte{3}, 32))},
		"no v1 entry":      {headers("v0"+good[2:], now.Unix()), body, secret},
		"malformed secret": {headers(good, now.Unix()), body, "whsec_!!!"},
	}
	for name, c := range cases {
		if _, err := verifyAt(c.h, c.body, c.sec, 0, now); !errors.Is(err, ErrInvalidWebhook) {
			t.Errorf("%s: got %v, want ErrInvalidWebhook", name, err)
		}
	}
	// A wider window admits the older delivery.
	old := now.Unix() - 301
	if _, err := verifyAt(headers("v1,"+sign(key, "evt_1", old, body), old), body, secret, 10*time.Minute, now); err != nil {
		t.Fatal(err)
	}
}

func TestDecodeErrorInfo(t *testing.T) {
	// ErrorInfo{reason: "invalid_request", domain: "whatisup", metadata: {"field": "to"}} as protoc encodes it.
	b := []byte{0x0a, 15}
	b = append(b, "invalid_request"...)
	b = append(b, 0x12, 8)
	b = append(b, "whatisup"...)
	entry := append([]byte{0x0a, 5}, "field"...)
	entry = append(entry, 0x12, 2, 't', 'o')
	b = append(b, 0x1a, byte(len(entry)))
	b = append(b, entry...)
	reason, md := decodeErrorInfo(b)
	if reason != "invalid_request" || md["field"] != "to" {
		t.Fatalf("decoded %q %v", reason, md)
	}
}
