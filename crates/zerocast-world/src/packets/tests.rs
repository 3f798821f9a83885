use super::*;
use proptest::prelude::*;
use zerocast::frame::{Header, HEADER_LEN};
use zerocast::packet::{FixedPacket, PacketError, VarPacket};
use zerocast::SendBuffer;
use zerocopy::little_endian::{F32, U16, U64};
use zerocopy::IntoBytes;

fn payload(buf: &SendBuffer) -> &[u8] {
    &buf.as_bytes()[HEADER_LEN..]
}

proptest! {
    #[test]
    fn fixed_packets_round_trip(x: f32, y: f32, z: f32, v: f32, target: u64, version: u16) {
        let m = Move::new(x, y, z, v);
        let frame = m.encode();
        let header = Header::parse(frame.as_bytes()).unwrap();
        prop_assert_eq!((header.id, usize::from(header.size)), (Move::ID, 4 + 16));
        let back = Move::decode(payload(&frame)).unwrap();
        prop_assert_eq!(back.as_bytes(), m.as_bytes());
        prop_assert_eq!(back.check().is_ok(), [x, y, z, v].iter().all(|f| f.is_finite()));

        let a = Attack::new(target);
        prop_assert_eq!(Attack::decode(payload(&a.encode())).unwrap().target.get(), target);
        let j = Join::new(version);
        prop_assert_eq!(Join::decode(payload(&j.encode())).unwrap().protocol.get(), version);
    }

    #[test]
    fn chat_round_trips(text in "\\PC{0,100}", global: bool) {
        let channel = u8::from(global);
        let frame = ChatText { channel, text: &text }.encode().unwrap();
        let back = Chat::decode(payload(&frame)).unwrap();
        prop_assert_eq!(back, ChatText { channel, text: &text });
    }

    #[test]
    fn wrong_lengths_are_reported(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
        let want = Ok::<usize, PacketError>(16);
        let got = Move::decode(&bytes).map(|m| m.as_bytes().len());
        if bytes.len() == 16 {
            prop_assert_eq!(got, want);
        } else {
            prop_assert_eq!(got, Err(PacketError::WrongLength { id: Move::ID, expected: 16, got: bytes.len() }));
        }
    }
}

#[test]
fn server_packets_round_trip() {
    fn round<P: FixedPacket + std::fmt::Debug + PartialEq>(p: P) {
        let frame = p.encode();
        let header = Header::parse(frame.as_bytes()).unwrap();
        assert_eq!(header.id, P::ID);
        assert_eq!(P::decode(payload(&frame)).unwrap(), &p);
    }
    let f = F32::new;
    round(Welcome {
        id: U64::new(7),
        x: f(1.0),
        y: f(2.0),
        z: f(0.0),
        world_size: f(4000.0),
        cell_size: f(100.0),
        max_speed: f(20.0),
        tick_ms: U16::new(50),
    });
    round(Moved {
        id: U64::new(u64::MAX),
        x: f(-1.5),
        y: f(3.25),
        z: f(0.5),
        velocity: f(9.0),
    });
    round(Entered {
        id: U64::new(3),
        x: f(1.0),
        y: f(1.0),
        z: f(1.0),
    });
    round(Left { id: U64::new(3) });
    round(Attacked {
        attacker: U64::new(1),
        target: U64::new(2),
    });
    round(Rejected {
        packet: U16::new(Move::ID),
        reason: reject::TOO_FAST,
        x: f(1.0),
        y: f(2.0),
        z: f(3.0),
    });
    assert_eq!(std::mem::size_of::<Rejected>(), 15);
}

#[test]
fn a_relayed_chat_line_is_its_prefix_and_the_original_payload() {
    let line = ChatText {
        channel: channel::GLOBAL,
        text: "héllo",
    }
    .encode()
    .unwrap();
    let chat = payload(&line);
    let prefix = ChatFrom::prefix(42, chat.len()).unwrap();
    let mut frame = prefix.as_bytes().to_vec();
    frame.extend_from_slice(chat);
    let header = Header::parse(&frame).unwrap();
    assert_eq!(
        (header.id, usize::from(header.size)),
        (ChatFrom::ID, frame.len())
    );
    let got = ChatFrom::decode(&frame[HEADER_LEN..]).unwrap();
    assert_eq!(got.from, 42);
    assert_eq!(got.chat.text, "héllo");
    assert_eq!(got.chat.channel, channel::GLOBAL);
    assert!(ChatFrom::prefix(1, 2 + MAX_CHAT).is_none());
    assert_eq!(
        ChatFrom::decode(&[1, 2, 3]),
        Err(PacketError::TooShort {
            id: ChatFrom::ID,
            min: 9,
            got: 3
        })
    );
    let mut bad = 5u64.to_le_bytes().to_vec();
    bad.extend_from_slice(&[0, 0xff]);
    assert_eq!(
        ChatFrom::decode(&bad),
        Err(PacketError::BadUtf8 { id: ChatFrom::ID })
    );
}

#[test]
fn decoding_reads_in_place() {
    let frame = Move::new(1.0, 2.0, 3.0, 4.0).encode();
    let bytes = payload(&frame);
    let m = Move::decode(bytes).unwrap();
    // The packet is the payload's own memory, not a copy.
    assert_eq!(std::ptr::from_ref(m).cast::<u8>(), bytes.as_ptr());
    // An odd offset is fine: the layout has no alignment requirement.
    let mut odd = [0u8; 17];
    odd[1..].copy_from_slice(bytes);
    assert_eq!(Move::decode(&odd[1..]).unwrap().y.get(), 2.0);
}

#[test]
fn bad_chat_is_rejected_with_a_reason() {
    let id = Chat::ID;
    assert_eq!(
        Chat::decode(&[]),
        Err(PacketError::TooShort { id, min: 1, got: 0 })
    );
    assert_eq!(
        Chat::decode(&[0, 0xff, 0xfe]),
        Err(PacketError::BadUtf8 { id })
    );
    assert!(matches!(
        Chat::decode(&[9, b'h']),
        Err(PacketError::Invalid { .. })
    ));
    let long = vec![b'a'; MAX_CHAT + 2];
    assert!(matches!(
        Chat::decode(&long),
        Err(PacketError::Invalid { .. })
    ));
    let nan = Move::new(f32::NAN, 0.0, 0.0, 1.0);
    assert!(matches!(nan.check(), Err(PacketError::Invalid { .. })));
    let inf = Move::new(0.0, f32::INFINITY, 0.0, 1.0);
    assert!(matches!(inf.check(), Err(PacketError::Invalid { .. })));
}
