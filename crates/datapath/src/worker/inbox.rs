//! The inbox of IKE messages that the receive worker found on the
//! ESP-in-UDP port, for the IKE driver.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use nix::sys::eventfd::{EfdFlags, EventFd};

/// IKE messages that arrived on the ESP-in-UDP port behind the non-ESP
/// marker (RFC 3948 section 2.2), queued by the receive worker for the
/// control plane. Closed (every message dropped and counted as `ike`)
/// until the control plane opens it; bounded, and counted as `ike` when
/// full. A copy per message is fine here: IKE is control traffic. Each
/// message queued makes an eventfd readable, which the IKE driver polls
/// beside its own socket, so a message waits for no timer.
#[derive(Debug, Default)]
pub struct IkeInbox {
    open: AtomicBool,
    queue: Mutex<VecDeque<(SocketAddr, Vec<u8>)>>,
    wake: OnceLock<EventFd>,
}

impl IkeInbox {
    /// The most messages waiting at once.
    pub const CAPACITY: usize = 256;

    /// Starts accepting messages (an IKE driver is running). Returns the
    /// descriptor that is readable while messages may be waiting: poll
    /// it, and call [`Self::clear_wake`] before popping.
    pub fn open(&self) -> io::Result<BorrowedFd<'_>> {
        let wake = match self.wake.get() {
            Some(w) => w,
            None => {
                let fd = EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_NONBLOCK | EfdFlags::EFD_CLOEXEC,
                )
                .map_err(io::Error::from)?;
                self.wake.get_or_init(|| fd)
            }
        };
        self.open.store(true, Ordering::Relaxed);
        Ok(wake.as_fd())
    }

    /// Queues a message from `src` and wakes the driver; `false` if the
    /// inbox is closed or full.
    pub fn push(&self, src: SocketAddr, message: &[u8]) -> bool {
        if !self.open.load(Ordering::Relaxed) {
            return false;
        }
        {
            let Ok(mut q) = self.queue.lock() else {
                return false;
            };
            if q.len() >= Self::CAPACITY {
                return false;
            }
            q.push_back((src, message.to_vec()));
        }
        self.wake();
        true
    }

    /// Makes the descriptor readable, so the driver's poll returns: after
    /// a message, or when something else waits for the driver (a
    /// command from the control socket).
    pub fn wake(&self) {
        if let Some(w) = self.wake.get() {
            // EAGAIN only when the counter is about to overflow, when it
            // is readable anyway.
            let _ = w.write(1);
        }
    }

    /// Makes the descriptor unreadable again until the next push.
    pub fn clear_wake(&self) {
        if let Some(w) = self.wake.get() {
            // EAGAIN when it was not readable: nothing to clear.
            let _ = w.read();
        }
    }

    /// The oldest waiting message and where it came from.
    pub fn pop(&self) -> Option<(SocketAddr, Vec<u8>)> {
        self.queue.lock().ok()?.pop_front()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::socket::Poller;
    use std::os::fd::AsRawFd;
    use std::sync::Arc;

    #[test]
    fn ike_inbox_is_closed_until_opened_and_bounded() {
        let inbox = IkeInbox::default();
        let src = SocketAddr::from(([192, 0, 2, 2], 4500));
        assert!(!inbox.push(src, b"ike"), "closed: no IKE driver");
        assert_eq!(inbox.pop(), None);
        inbox.open().unwrap();
        for i in 0..IkeInbox::CAPACITY {
            assert!(inbox.push(src, &[i as u8]));
        }
        assert!(!inbox.push(src, b"one too many"));
        assert_eq!(inbox.pop(), Some((src, vec![0])));
        assert!(inbox.push(src, b"room again"));
    }

    /// A queued message makes the inbox's descriptor readable, and
    /// `clear_wake` makes it unreadable until the next one.
    #[test]
    fn ike_inbox_wakes_its_poller() {
        let inbox = IkeInbox::default();
        let fd = inbox.open().unwrap().as_raw_fd();
        let mut poller = Poller::new(&[fd]);
        poller.wait(0).unwrap();
        assert!(!poller.is_ready(0), "nothing queued yet");
        let src = SocketAddr::from(([192, 0, 2, 2], 4500));
        let pusher = {
            let inbox = Arc::new(inbox);
            let i = inbox.clone();
            (inbox, std::thread::spawn(move || i.push(src, b"ike")))
        };
        let (inbox, t) = pusher;
        assert!(t.join().unwrap());
        poller.wait(1000).unwrap();
        assert!(poller.is_ready(0), "woken by the push");
        inbox.clear_wake();
        assert_eq!(inbox.pop(), Some((src, b"ike".to_vec())));
        poller.wait(0).unwrap();
        assert!(!poller.is_ready(0), "cleared");
    }
}
