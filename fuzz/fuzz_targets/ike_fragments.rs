//! The RFC 7383 reassembler (`tunsec_ike::sa::fragment::Reassembly`) fed
//! arbitrary fragment sequences (`tunsec_fuzz::fragments::FragmentInput`):
//! SKF messages sealed with fixed keys but whatever Fragment Number,
//! Total Fragments, message ID and piece the fuzzer picks; raw bytes;
//! the clock moving on; and real messages cut by `seal_fragments`, fed in
//! any order with duplicates.
//!
//! It must never panic, and:
//! - after every step, each of its two slots holds at most
//!   `MAX_FRAGMENTS` (255) fragments and `MAX_REASSEMBLED` (64 KiB) of
//!   plaintext;
//! - bytes that do not open as a fragment under the keys (forged) are
//!   refused with an error and change nothing held (a seed may replay a
//!   real fragment: the keys are fixed);
//! - a message completes only once every fragment number from 1 to its
//!   Total Fragments was fed for its message ID;
//! - a real message of at most 255 fragments and 64 KiB comes back whole
//!   (the same payloads) exactly when its last missing fragment arrives,
//!   duplicates are dropped, and one over either bound (up to 128 KiB are
//!   cut) never completes.
#![no_main]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use libfuzzer_sys::fuzz_target;
use tunsec_fuzz::fragments::{FragmentInput, FragmentStep, fragment_cipher, fragment_header};
use tunsec_ike::crypto::SkCipher;
use tunsec_ike::message::{Notify, NotifyType, Payload, PayloadType, encode_payloads};
use tunsec_ike::sa::fragment::{Added, MAX_FRAGMENTS, MAX_REASSEMBLED, Reassembly};

/// The message IDs of `Whole` steps start here, above the fuzzer's (`u8`).
const WHOLE_IDS: u32 = 0x100;

fuzz_target!(|input: FragmentInput| {
    let cipher = fragment_cipher(input.cbc);
    let mut reassembly = Reassembly::default();
    let mut now = Instant::now();
    // The fragment numbers fed per (response, message ID, total).
    let mut fed: Vec<((bool, u32, u16), BTreeSet<u16>)> = Vec::new();
    let mut next_whole = WHOLE_IDS;
    for step in input.steps {
        match step {
            FragmentStep::Sealed {
                response,
                message_id,
                number,
                total,
                first_payload,
                piece,
            } => {
                let header = fragment_header(response, u32::from(message_id));
                let first = PayloadType::from(first_payload);
                let Ok(bytes) = cipher.seal_fragment(&header, first, number, total, &piece) else {
                    continue;
                };
                let key = (response, u32::from(message_id), total);
                match fed.iter_mut().find(|(k, _)| *k == key) {
                    Some((_, numbers)) => {
                        numbers.insert(number);
                    }
                    None => fed.push((key, BTreeSet::from([number]))),
                }
                if let Ok(Added::Complete(message)) = reassembly.add(now, &cipher, &bytes) {
                    let numbers = fed
                        .iter()
                        .find(|(k, _)| *k == key)
                        .map(|(_, n)| n)
                        .expect("recorded above");
                    assert!(
                        (1..=total).all(|n| numbers.contains(&n)),
                        "message {message_id} completed before all its {total} fragments came"
                    );
                    assert_eq!(message.header.message_id, u32::from(message_id));
                }
            }
            FragmentStep::Raw(bytes) => {
                let before = reassembly.held();
                let added = reassembly.add(now, &cipher, &bytes);
                if cipher.open_fragment(&bytes).is_err() {
                    assert!(added.is_err(), "a forged fragment was taken");
                    assert_eq!(reassembly.held(), before);
                }
            }
            FragmentStep::Wait(seconds) => now += Duration::from_secs(u64::from(seconds)),
            FragmentStep::Whole {
                response,
                large,
                max_len,
                data_len,
                order,
            } => {
                let message_id = next_whole;
                next_whole += 1;
                let data_len = if large {
                    usize::from(data_len) * 2
                } else {
                    usize::from(data_len) % (16 * 1024)
                };
                whole(
                    &cipher,
                    &mut reassembly,
                    now,
                    response,
                    message_id,
                    usize::from(max_len) + 80,
                    data_len,
                    &order,
                );
            }
        }
        for (fragments, bytes) in reassembly.held() {
            assert!(fragments <= MAX_FRAGMENTS, "{fragments} fragments held");
            assert!(bytes <= MAX_REASSEMBLED, "{bytes} bytes held");
        }
    }
});

/// Cuts a real message and feeds its fragments in the fuzzer's order:
/// see the `Whole` step.
#[allow(clippy::too_many_arguments)]
fn whole(
    cipher: &SkCipher,
    reassembly: &mut Reassembly,
    now: Instant,
    response: bool,
    message_id: u32,
    max_len: usize,
    data_len: usize,
    order: &[u8],
) {
    let header = fragment_header(response, message_id);
    // A payload's length field has 16 bits: 16 KiB of data per Notify.
    let data = vec![0xa5; data_len];
    let payloads: Vec<Payload> = data
        .chunks(16 * 1024)
        .map(|d| Payload::Notify(Notify::new(NotifyType::Unknown(40_000), d.to_vec())))
        .collect();
    let Ok(fragments) = cipher.seal_fragments(&header, &payloads, max_len) else {
        return;
    };
    if fragments.len() < 2 {
        // Not cut: one SK message, not a fragment.
        return;
    }
    let mut plaintext = Vec::new();
    encode_payloads(&payloads, &mut plaintext).expect("it was sealed");
    let fits = fragments.len() <= usize::from(MAX_FRAGMENTS) && plaintext.len() <= MAX_REASSEMBLED;
    let picked = order.iter().map(|&i| usize::from(i) % fragments.len());
    let sequence: Vec<usize> = picked.chain(0..fragments.len()).collect();
    let mut seen = BTreeSet::new();
    let mut completed = false;
    for i in sequence {
        let added = reassembly
            .add(now, cipher, &fragments[i])
            .expect("an authentic fragment of a well-formed message");
        let new = seen.insert(i);
        match added {
            Added::Complete(message) => {
                assert!(fits && new && seen.len() == fragments.len());
                assert_eq!(message.header.message_id, message_id);
                assert_eq!(message.payloads, payloads, "the message came back changed");
                completed = true;
                // A fragment after this one would start the message over.
                break;
            }
            // Over 64 KiB, the reassembler drops what it held and starts
            // again with the next fragment: never complete, though.
            Added::Pending => assert!(!fits || (new && seen.len() < fragments.len())),
            Added::Dropped => assert!(!fits || !new, "a new fragment was dropped"),
        }
    }
    assert_eq!(completed, fits);
}
