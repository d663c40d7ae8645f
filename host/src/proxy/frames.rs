//! Counts WebSocket messages in a byte stream without decoding payloads.
//!
//! The proxy forwards WebSocket bytes untouched (no re-framing, no
//! buffering of messages); this meter reads just the frame headers as the
//! bytes pass, so the idle plugin can tell a chatty session from a silent
//! one. A message is counted at the header of its final frame (FIN set,
//! opcode continuation, text or binary); control frames are not messages.

/// Incremental frame-header parser for one direction of a WebSocket.
#[derive(Debug, Default, Clone)]
pub struct FrameMeter {
    header: [u8; 14],
    have: usize,
    /// Payload bytes of the current frame still to skip.
    skip: u64,
    /// A Close frame went by: this direction's sender is closing.
    close_seen: bool,
}

impl FrameMeter {
    /// Feeds the next bytes of the stream; returns messages completed.
    pub fn feed(&mut self, mut data: &[u8]) -> u64 {
        let mut messages = 0;
        while !data.is_empty() {
            if self.skip > 0 {
                let n = (self.skip.min(data.len() as u64)) as usize;
                self.skip -= n as u64;
                data = &data[n..];
                continue;
            }
            // Accumulate the header: 2 bytes, then the extended length and
            // the mask key they announce.
            let need = match self.have {
                0 | 1 => 2,
                _ => header_len(&self.header),
            };
            let take = (need - self.have).min(data.len());
            self.header[self.have..self.have + take].copy_from_slice(&data[..take]);
            self.have += take;
            data = &data[take..];
            if self.have < 2 || self.have < header_len(&self.header) {
                continue;
            }
            let b0 = self.header[0];
            let (fin, opcode) = (b0 & 0x80 != 0, b0 & 0x0f);
            if fin && opcode <= 2 {
                messages += 1;
            }
            self.close_seen |= opcode == 8;
            self.skip = payload_len(&self.header);
            self.have = 0;
        }
        messages
    }

    /// Whether the bytes fed so far end exactly at a frame's end (or
    /// nothing was fed): a frame may be inserted here.
    pub fn at_boundary(&self) -> bool {
        self.have == 0 && self.skip == 0
    }

    /// How many more bytes end the frame in progress: its payload's rest,
    /// or, inside a header, the header's rest (its payload's length is then
    /// known). Zero at a boundary. Reading no more than this keeps a
    /// stream at a frame boundary once it reaches one.
    pub fn to_boundary(&self) -> usize {
        match (self.have, self.skip) {
            (0, 0) => 0,
            (0, skip) => usize::try_from(skip).unwrap_or(usize::MAX),
            (1, _) => 1,
            (have, _) => header_len(&self.header) - have,
        }
    }

    /// Whether a Close frame went by (after one, its sender sends no more
    /// frames, and its receiver must not be sent another Close).
    pub fn closing(&self) -> bool {
        self.close_seen
    }
}

fn header_len(h: &[u8; 14]) -> usize {
    let ext = match h[1] & 0x7f {
        126 => 2,
        127 => 8,
        _ => 0,
    };
    let mask = if h[1] & 0x80 != 0 { 4 } else { 0 };
    2 + ext + mask
}

fn payload_len(h: &[u8; 14]) -> u64 {
    match h[1] & 0x7f {
        126 => u16::from_be_bytes([h[2], h[3]]) as u64,
        127 => u64::from_be_bytes(h[2..10].try_into().expect("8 bytes")),
        n => n as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![(if fin { 0x80 } else { 0 }) | opcode];
        let m = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(m | len as u8),
            126..=65535 => {
                f.push(m | 126);
                f.extend((len as u16).to_be_bytes());
            }
            _ => {
                f.push(m | 127);
                f.extend((len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend([1, 2, 3, 4]);
        }
        f.extend(std::iter::repeat_n(0xAA, len));
        f
    }

    #[test]
    fn counts_messages_not_fragments_or_control_frames() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 1, true, 5)); // text
        stream.extend(frame(false, 2, true, 300)); // binary, first fragment
        stream.extend(frame(true, 9, true, 0)); // ping in between
        stream.extend(frame(true, 0, true, 70_000)); // last fragment
        stream.extend(frame(true, 10, false, 3)); // pong
        stream.extend(frame(true, 1, false, 0)); // empty text
        let mut whole = FrameMeter::default();
        assert_eq!(whole.feed(&stream), 3);

        // Byte by byte gives the same answer.
        let mut split = FrameMeter::default();
        let total: u64 = stream.iter().map(|b| split.feed(std::slice::from_ref(b))).sum();
        assert_eq!(total, 3);

        // And arbitrary chunking.
        let mut chunked = FrameMeter::default();
        let total: u64 = stream.chunks(7).map(|c| chunked.feed(c)).sum();
        assert_eq!(total, 3);
    }

    #[test]
    fn knows_when_a_frame_ends() {
        let mut meter = FrameMeter::default();
        assert!(meter.at_boundary(), "nothing fed yet");
        let f = frame(true, 2, true, 300);
        meter.feed(&f[..1]);
        assert!(!meter.at_boundary(), "inside the header");
        meter.feed(&f[1..10]);
        assert!(!meter.at_boundary(), "inside the payload");
        meter.feed(&f[10..]);
        assert!(meter.at_boundary());
        meter.feed(&frame(true, 9, false, 0));
        assert!(meter.at_boundary(), "an empty ping is whole once its header is");
        assert!(!meter.closing());
        meter.feed(&frame(true, 8, false, 2));
        assert!(meter.closing(), "a Close frame went by");
    }

    #[test]
    fn reading_no_more_than_to_boundary_stops_at_each_frame_end() {
        let mut stream = Vec::new();
        stream.extend(frame(true, 2, true, 300));
        stream.extend(frame(true, 9, false, 0));
        stream.extend(frame(true, 1, false, 70_000));
        let mut meter = FrameMeter::default();
        meter.feed(&stream[..1]);
        let mut at = 1;
        let mut boundaries = Vec::new();
        while at < stream.len() {
            let n = meter.to_boundary();
            assert!(n > 0, "inside a frame at {at}");
            meter.feed(&stream[at..at + n]);
            at += n;
            if meter.at_boundary() {
                assert_eq!(meter.to_boundary(), 0);
                boundaries.push(at);
                if at < stream.len() {
                    meter.feed(&stream[at..at + 1]);
                    at += 1;
                }
            }
        }
        assert_eq!(boundaries, vec![308, 310, 310 + 10 + 70_000]);
    }
}
