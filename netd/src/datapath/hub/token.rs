//! What an epoll event of the hub is about.

pub(super) const ROLE_CONTAINER: u64 = 0;
pub(super) const ROLE_BUBBLE: u64 = 1;
pub(super) const ROLE_EXIT: u64 = 2;
pub(super) const CONTROL: u64 = u64::MAX;

/// What an epoll event is about: the role (bits 0-1), the slot (2-31), and the generation
/// of the pair in the slot (32-63). epoll returns a batch of events in no particular
/// order: a slot freed and taken again while the batch is handled must not get the old
/// pair's events (an old pair's exit would remove the new one).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Token {
    pub(super) slot: usize,
    pub(super) generation: u32,
    pub(super) role: u64,
}

impl Token {
    pub(super) fn encode(self) -> u64 {
        (u64::from(self.generation) << 32) | ((self.slot as u64) << 2) | self.role
    }

    pub(super) fn decode(data: u64) -> Token {
        Token {
            slot: ((data & 0xffff_ffff) >> 2) as usize,
            generation: (data >> 32) as u32,
            role: data & 3,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        let t = Token {
            slot: (1 << 30) - 1,
            generation: u32::MAX,
            role: ROLE_BUBBLE,
        };
        assert_eq!(Token::decode(t.encode()), t);
        assert_ne!(t.encode(), CONTROL);
    }
}
