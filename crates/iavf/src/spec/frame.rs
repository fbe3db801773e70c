//! Test frames: the UDP/IPv4 frame the `txonly` back-end, the client's `txonly` engine and
//! `tx_first` send (198.18.0.1:9 → 198.19.0.1:9, the RFC 2544 benchmarking range), and the IPv4
//! header checksum.

/// Ethernet + IPv4 + UDP headers: the shortest [`udp_frame`].
pub const UDP_FRAME_MIN: usize = 42;

/// A UDP/IPv4 frame of `len` bytes (at least [`UDP_FRAME_MIN`]; at most 65549, what the IPv4
/// length field can describe) from `src` to `dst`: TTL 64, IPv4 header checksum set, UDP
/// checksum 0 (none), the payload bytes counting up from 0.
pub fn udp_frame(len: usize, src: [u8; 6], dst: [u8; 6]) -> Vec<u8> {
    let len = len.clamp(UDP_FRAME_MIN, 14 + usize::from(u16::MAX));
    let mut f = vec![0u8; len];
    f[0..6].copy_from_slice(&dst);
    f[6..12].copy_from_slice(&src);
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    // Clamped above: fits 16 bits.
    let ip_len = (len - 14) as u16;
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&ip_len.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&[198, 18, 0, 1]);
    ip[16..20].copy_from_slice(&[198, 19, 0, 1]);
    let sum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&sum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&9u16.to_be_bytes());
    udp[2..4].copy_from_slice(&9u16.to_be_bytes());
    udp[4..6].copy_from_slice(&(ip_len - 20).to_be_bytes());
    for (i, b) in f[42..].iter_mut().enumerate() {
        *b = i as u8;
    }
    f
}

/// The one's-complement checksum of an IPv4 header (0 for a header whose checksum is right;
/// the value to store for one whose checksum field is zero).
pub fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c.get(1).copied().unwrap_or(0)])))
        .sum();
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn udp_frame_has_a_valid_ipv4_header_and_the_benchmarking_addresses() {
        let f = udp_frame(64, [2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.len(), 64);
        assert_eq!(&f[0..6], &[2, 0, 0, 0, 0, 2]);
        assert_eq!(&f[6..12], &[2, 0, 0, 0, 0, 1]);
        assert_eq!(&f[12..14], &[0x08, 0x00]);
        assert_eq!(ipv4_checksum(&f[14..34]), 0);
        assert_eq!(u16::from_be_bytes([f[16], f[17]]), 50);
        assert_eq!(&f[26..30], &[198, 18, 0, 1]);
        assert_eq!(&f[30..34], &[198, 19, 0, 1]);
        assert_eq!(u16::from_be_bytes([f[38], f[39]]), 30);
        assert_eq!(&f[42..45], &[0, 1, 2]);
        assert_eq!(udp_frame(10, [0; 6], [0; 6]).len(), UDP_FRAME_MIN);
    }

    #[test]
    fn checksum_matches_a_worked_example() {
        // The classic example header (Wikipedia's IPv4 checksum walk-through): 0xB861.
        let h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(ipv4_checksum(&h), 0xB861);
    }
}
