//! The byte stream under the Noise layer: a minimal RFC 6455 server over the upgraded HTTP
//! connection, the connection preamble, and the 3-byte length framing.
//!
//! A hand-rolled WebSocket instead of tungstenite because WhatsApp clients send one ~30 KiB
//! message (the pre-key upload) per login, and tungstenite keeps a receive buffer of the largest
//! message for the life of the connection; here an idle connection holds no buffer at all.

use std::time::Duration;

use anyhow::{anyhow, bail};
use bytes::{Buf, BytesMut};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::noise::preamble_len;

/// Bytes asked from the socket per read.
const READ_CHUNK: usize = 4 * 1024;

/// Receive-buffer capacity an idle connection may keep; a larger one (left by the pre-key
/// upload) is given back once the frames in it have been taken out.
const IDLE_BUFFER: usize = 4 * 1024;

/// Largest WebSocket frame accepted (the Noise framing cannot exceed 16 MiB either).
const MAX_WS_FRAME: u64 = 16 * 1024 * 1024;

/// `Sec-WebSocket-Accept` for a client's `Sec-WebSocket-Key` (RFC 6455 §4.2.2).
pub(crate) fn accept_key(key: &[u8]) -> String {
    use base64::Engine as _;
    use sha1::Digest as _;
    let mut sha = sha1::Sha1::new();
    sha.update(key);
    sha.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::prelude::BASE64_STANDARD.encode(sha.finalize())
}

pub(crate) struct Wire {
    io: TokioIo<Upgraded>,
    /// Raw bytes read but not yet parsed as WebSocket frames.
    raw: BytesMut,
    ws: WsReader,
    frames: Frames,
    /// Bytes seen before the preamble was complete; `None` once it has been stripped.
    preamble: Option<Vec<u8>>,
    /// The client opened with an edge-routing pre-intro (`ED…`).
    pub(crate) edge_routed: bool,
    /// Control frames to answer (pongs), sent before the next write or read.
    replies: Vec<u8>,
    peer_closed: bool,
}

impl Wire {
    pub(crate) fn new(io: TokioIo<Upgraded>) -> Self {
        Self {
            io,
            raw: BytesMut::new(),
            ws: WsReader::default(),
            frames: Frames::default(),
            preamble: Some(Vec::new()),
            edge_routed: false,
            replies: Vec::new(),
            peer_closed: false,
        }
    }

    /// The next complete Noise-layer frame already received, if any.
    pub(crate) fn buffered_frame(&mut self) -> Option<BytesMut> {
        if self.preamble.is_some() {
            return None;
        }
        self.frames.next()
    }

    /// Reads once from the socket; `false` when the client has gone. Cancel-safe: nothing is
    /// consumed unless the read completes.
    pub(crate) async fn read_some(&mut self) -> anyhow::Result<bool> {
        if self.peer_closed {
            return Ok(false);
        }
        self.flush_replies().await?;
        self.raw.reserve(READ_CHUNK);
        let n = self.io.read_buf(&mut self.raw).await?;
        if n == 0 {
            return Ok(false);
        }
        let mut data = BytesMut::new();
        let closed = self.ws.parse(&mut self.raw, &mut data, &mut self.replies)?;
        if self.raw.is_empty() {
            // Nothing pending: hold no buffer while idle.
            self.raw = BytesMut::new();
        }
        if !data.is_empty() {
            self.feed(&data)?;
        }
        if closed {
            self.peer_closed = true;
            // Answer the close handshake; the client hangs up next.
            let _ = self.io.write_all(&[0x88, 0x00]).await;
            return Ok(false);
        }
        Ok(true)
    }

    fn feed(&mut self, data: &[u8]) -> anyhow::Result<()> {
        let Some(buf) = self.preamble.as_mut() else {
            self.frames.feed(data);
            return Ok(());
        };
        buf.extend_from_slice(data);
        if let Some(n) = preamble_len(buf)? {
            self.edge_routed = buf.starts_with(b"ED");
            let rest = buf.split_off(n);
            self.preamble = None;
            self.frames.feed(&rest);
        }
        Ok(())
    }

    /// The next frame, reading as needed (for the handshake).
    pub(crate) async fn recv_frame(&mut self) -> anyhow::Result<BytesMut> {
        loop {
            if let Some(frame) = self.buffered_frame() {
                return Ok(frame);
            }
            if !self.read_some().await? {
                bail!("client closed the connection during the handshake");
            }
        }
    }

    /// Sends one Noise-layer frame as one binary WebSocket message.
    pub(crate) async fn send_frame(&mut self, payload: &[u8]) -> anyhow::Result<()> {
        self.flush_replies().await?;
        let framed_len = payload.len() + 3;
        if framed_len >= 1 << 24 {
            bail!("frame of {} bytes is too large", payload.len());
        }
        let mut out = Vec::with_capacity(framed_len + 10);
        ws_header(&mut out, 0x2, framed_len);
        out.extend_from_slice(&(framed_len as u32 - 3).to_be_bytes()[1..]);
        out.extend_from_slice(payload);
        self.io
            .write_all(&out)
            .await
            .map_err(|e| anyhow!("websocket write failed: {e}"))
    }

    async fn flush_replies(&mut self) -> anyhow::Result<()> {
        if !self.replies.is_empty() {
            let replies = std::mem::take(&mut self.replies);
            self.io.write_all(&replies).await?;
        }
        Ok(())
    }

    /// Ends the connection after a final stanza without resetting it: a close frame, then
    /// reading until the client hangs up (it does on every terminal stanza). Dropping a socket
    /// with unread input sends a TCP RST, which may destroy that last stanza before it is read.
    pub(crate) async fn linger(&mut self, limit: Duration) {
        let _ = self.io.write_all(&[0x88, 0x00]).await;
        let drain = async { while let Ok(true) = self.read_some().await {} };
        let _ = tokio::time::timeout(limit, drain).await;
        let _ = self.io.shutdown().await;
    }
}

fn ws_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

/// Incremental parser of client-to-server WebSocket frames (always masked).
#[derive(Default)]
struct WsReader {
    /// The frame whose payload is being read.
    current: Option<FrameState>,
    /// Payload of a control frame (at most 125 bytes).
    control: Vec<u8>,
}

struct FrameState {
    opcode: u8,
    mask: [u8; 4],
    remaining: u64,
    offset: usize,
}

impl WsReader {
    /// Consumes what it can of `raw`: data payloads are unmasked into `data`, pongs for pings
    /// appended to `replies`. Returns whether the client sent a close frame.
    fn parse(
        &mut self,
        raw: &mut BytesMut,
        data: &mut BytesMut,
        replies: &mut Vec<u8>,
    ) -> anyhow::Result<bool> {
        loop {
            if self.current.is_none() {
                let Some((state, header_len)) = parse_header(raw)? else {
                    return Ok(false);
                };
                raw.advance(header_len);
                self.control.clear();
                self.current = Some(state);
            }
            let Some(frame) = self.current.as_mut() else {
                return Ok(false);
            };
            let take = usize::try_from(frame.remaining)
                .unwrap_or(usize::MAX)
                .min(raw.len());
            let unmasked = raw[..take]
                .iter()
                .enumerate()
                .map(|(i, b)| b ^ frame.mask[(frame.offset + i) % 4]);
            if frame.opcode & 0x8 != 0 {
                self.control.extend(unmasked);
            } else {
                data.extend(unmasked);
            }
            raw.advance(take);
            frame.offset += take;
            frame.remaining -= take as u64;
            if frame.remaining > 0 {
                return Ok(false);
            }
            let opcode = frame.opcode;
            self.current = None;
            match opcode {
                0x0..=0x2 => {}
                0x8 => return Ok(true),
                0x9 => {
                    ws_header(replies, 0xA, self.control.len());
                    replies.extend_from_slice(&self.control);
                }
                0xA => {}
                other => bail!("unknown WebSocket opcode {other:#x}"),
            }
        }
    }
}

/// A complete frame header at the start of `raw`, and its length; `None` while incomplete.
fn parse_header(raw: &[u8]) -> anyhow::Result<Option<(FrameState, usize)>> {
    let [first, second, ..] = *raw else {
        return Ok(None);
    };
    let opcode = first & 0x0f;
    if second & 0x80 == 0 {
        bail!("client WebSocket frame is not masked");
    }
    let (len, mut at) = match second & 0x7f {
        126 => match raw.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match raw.get(2..10).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
            Some(b) => (u64::from_be_bytes(b), 10),
            None => return Ok(None),
        },
        n => (u64::from(n), 2),
    };
    if opcode & 0x8 != 0 && (len > 125 || first & 0x80 == 0) {
        bail!("malformed WebSocket control frame");
    }
    if len > MAX_WS_FRAME {
        bail!("WebSocket frame of {len} bytes is too large");
    }
    let Some(mask) = raw
        .get(at..at + 4)
        .and_then(|m| <[u8; 4]>::try_from(m).ok())
    else {
        return Ok(None);
    };
    at += 4;
    Ok(Some((
        FrameState {
            opcode,
            mask,
            remaining: len,
            offset: 0,
        },
        at,
    )))
}

/// Splits the byte stream into frames (3-byte big-endian length, then the frame). Like
/// `wacore::framing::FrameDecoder`, but it does not keep a large buffer once it is drained.
#[derive(Default)]
struct Frames {
    buf: BytesMut,
}

impl Frames {
    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    fn next(&mut self) -> Option<BytesMut> {
        let header: [u8; 3] = self.buf.get(..3)?.try_into().ok()?;
        let len =
            (usize::from(header[0]) << 16) | (usize::from(header[1]) << 8) | usize::from(header[2]);
        if self.buf.len() < 3 + len {
            return None;
        }
        self.buf.advance(3);
        let frame = self.buf.split_to(len);
        if self.buf.capacity() > IDLE_BUFFER && self.buf.len() <= IDLE_BUFFER {
            self.buf = BytesMut::from(&self.buf[..]);
        }
        Some(frame)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use whatsapp_rust::wacore::framing::encode_frame;

    #[test]
    fn accept_key_matches_rfc_6455_example() {
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    fn masked(opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
        let mut out = Vec::new();
        ws_header(&mut out, opcode, payload.len());
        out[1] |= 0x80;
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    #[test]
    fn ws_frames_parse_across_reads_and_pings_get_pongs() {
        let big = vec![9u8; 70_000];
        let mut stream = masked(0x2, b"hello", [1, 2, 3, 4]);
        stream.extend(masked(0x9, b"ping!", [5, 6, 7, 8]));
        stream.extend(masked(0x2, &big, [9, 10, 11, 12]));
        stream.extend(masked(0x8, b"", [0, 0, 0, 0]));
        for chunk_size in [1, 3, 1000, stream.len()] {
            let mut reader = WsReader::default();
            let mut raw = BytesMut::new();
            let mut data = BytesMut::new();
            let mut replies = Vec::new();
            let mut closed = false;
            for chunk in stream.chunks(chunk_size) {
                // Leftovers carry over to the next read, as in Wire::read_some.
                raw.extend_from_slice(chunk);
                closed |= reader.parse(&mut raw, &mut data, &mut replies).unwrap();
            }
            assert!(closed, "chunks of {chunk_size}");
            assert_eq!(&data[..5], b"hello");
            assert_eq!(&data[5..], &big[..]);
            assert_eq!(replies, [&[0x8a, 5][..], b"ping!"].concat());
        }
    }

    #[test]
    fn unmasked_client_frames_are_refused() {
        let mut raw = BytesMut::from(&[0x82, 0x01, 0x00][..]);
        let err = WsReader::default().parse(&mut raw, &mut BytesMut::new(), &mut Vec::new());
        assert!(err.is_err());
    }

    #[test]
    fn frames_split_across_feeds_and_shrink_after_a_big_one() {
        let mut frames = Frames::default();
        let big = vec![7u8; 40_000];
        let mut stream = encode_frame(&big, None).unwrap();
        stream.extend(encode_frame(b"small", None).unwrap());
        let (a, b) = stream.split_at(1000);
        frames.feed(a);
        assert!(frames.next().is_none());
        frames.feed(&b[..b.len() - 2]);
        assert_eq!(frames.next().as_deref(), Some(&big[..]));
        assert!(frames.next().is_none());
        assert!(
            frames.buf.capacity() <= IDLE_BUFFER,
            "{}",
            frames.buf.capacity()
        );
        frames.feed(&b[b.len() - 2..]);
        assert_eq!(frames.next().as_deref(), Some(&b"small"[..]));
    }
}
