//! The `trace_record` properties: `emudev_vfio_user::trace::TraceRecord` is built from every
//! message a server or client sends or receives, before anything validated it, so it must take
//! any bytes: no panic, a JSON object whose `size` and `nfds` are the input's, a `cmd` name
//! whenever the 16-byte header is there, and text that parses back to the same value.

use emudev_vfio_user::trace::{Channel, Direction, Side, TraceRecord};

/// Checks the properties for `data`: byte 0 picks the side, direction, channel and fd count;
/// the rest is the message.
pub fn check_trace(data: &[u8]) {
    if let Err(e) = trace_properties(data) {
        panic!("{e}");
    }
}

/// The properties, as a result (for the plain tests).
pub fn trace_properties(data: &[u8]) -> Result<(), String> {
    let Some((&sel, msg)) = data.split_first() else {
        return Ok(());
    };
    let side = if sel & 1 == 0 {
        Side::Server
    } else {
        Side::Client
    };
    let dir = if sel & 2 == 0 {
        Direction::Recv
    } else {
        Direction::Send
    };
    let channel = if sel & 4 == 0 {
        Channel::Main
    } else {
        Channel::Twin
    };
    let nfds = usize::from((sel >> 3) & 3);
    let rec = TraceRecord::new(side, dir, channel, msg, nfds);
    let v = rec.to_json();
    let obj = v.as_object().ok_or("not a JSON object")?;
    if obj.get("size").and_then(|s| s.as_u64()) != Some(msg.len() as u64) {
        return Err(format!(
            "size {:?} for {} bytes",
            obj.get("size"),
            msg.len()
        ));
    }
    if obj.get("nfds").and_then(|s| s.as_u64()) != Some(nfds as u64) {
        return Err(format!("nfds {:?}, want {nfds}", obj.get("nfds")));
    }
    if msg.len() >= 16 && !obj.get("cmd").is_some_and(|c| c.is_string()) {
        return Err("a full header but no command name".into());
    }
    let text = v.to_string();
    let back: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("the line does not parse: {e}"))?;
    // `time` is a float: comparing needs serde_json's exact float parsing (`float_roundtrip`).
    if back != v {
        return Err(format!("the line parses to something else: {text}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::seeds;

    #[test]
    fn every_seed_message_and_every_prefix_of_it_traces() {
        for s in seeds::requests() {
            for sel in [0u8, 1, 2, 3, 4, 0x1f] {
                for cut in [0, 1, 15, 16, 17, s.message.len() / 2, s.message.len()] {
                    let cut = cut.min(s.message.len());
                    let mut input = vec![sel];
                    input.extend_from_slice(&s.message[..cut]);
                    trace_properties(&input)
                        .unwrap_or_else(|e| panic!("{} cut {cut}: {e}", s.name));
                }
            }
        }
    }

    #[test]
    fn garbage_traces_with_an_error_field() {
        let mut input = vec![0u8];
        input.extend_from_slice(&[0xFF; 40]);
        trace_properties(&input).expect("properties");
        let rec = TraceRecord::new(Side::Server, Direction::Recv, Channel::Main, &[0xFF; 40], 0);
        assert!(rec.to_json().get("error").is_some(), "{}", rec.to_json());
    }
}
