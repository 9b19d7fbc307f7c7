//! Generational slabs: entries addressed by a handle (slot index and generation) that stays
//! valid while its entry lives and never names a later entry that reused the slot. Lookups by a
//! stale handle return `None`, so a timer or an ack that outlived its object is simply ignored.

use std::marker::PhantomData;

/// A slot index and its generation.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key {
    index: u32,
    generation: u32,
}

impl Key {
    /// Both halves in one number (for names shared with the data plane).
    pub fn to_u64(self) -> u64 {
        (u64::from(self.generation) << 32) | u64::from(self.index)
    }

    /// The inverse of [`to_u64`](Self::to_u64).
    pub fn from_u64(v: u64) -> Key {
        Key {
            index: (v & 0xffff_ffff) as u32,
            generation: (v >> 32) as u32,
        }
    }
}

impl std::fmt::Display for Key {
    /// The slot, and the generation once the slot was reused (`3`, `3.1`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.generation {
            0 => write!(f, "{}", self.index),
            g => write!(f, "{}.{g}", self.index),
        }
    }
}

/// A handle type of one slab.
pub trait Handle: Copy {
    /// Wraps a key.
    fn from_key(k: Key) -> Self;
    /// The key.
    fn key(self) -> Key;
}

/// Defines a handle type.
macro_rules! handle {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(pub(crate) $crate::driver::slab::Key);

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                std::fmt::Display::fmt(&self.0, f)
            }
        }

        impl $crate::driver::slab::Handle for $name {
            fn from_key(k: $crate::driver::slab::Key) -> Self {
                $name(k)
            }
            fn key(self) -> $crate::driver::slab::Key {
                self.0
            }
        }
    };
}
pub(crate) use handle;

#[derive(Debug)]
enum Slot<T> {
    Full { generation: u32, value: T },
    Free { generation: u32 },
}

/// Entries of type `T` addressed by handles of type `H`.
#[derive(Debug)]
pub struct Slab<H, T> {
    slots: Vec<Slot<T>>,
    free: Vec<u32>,
    len: usize,
    _h: PhantomData<H>,
}

impl<H: Handle, T> Default for Slab<H, T> {
    fn default() -> Self {
        Slab {
            slots: Vec::new(),
            free: Vec::new(),
            len: 0,
            _h: PhantomData,
        }
    }
}

impl<H: Handle, T> Slab<H, T> {
    /// Stores `value`; returns its handle.
    pub fn insert(&mut self, value: T) -> H {
        self.len += 1;
        if let Some(index) = self.free.pop()
            && let Some(slot) = self.slots.get_mut(index as usize)
        {
            let generation = match slot {
                Slot::Free { generation } | Slot::Full { generation, .. } => *generation,
            };
            *slot = Slot::Full { generation, value };
            return H::from_key(Key { index, generation });
        }
        let index = u32::try_from(self.slots.len()).unwrap_or(u32::MAX);
        self.slots.push(Slot::Full {
            generation: 0,
            value,
        });
        H::from_key(Key {
            index,
            generation: 0,
        })
    }

    /// The entry of `h`, if it still lives.
    pub fn get(&self, h: H) -> Option<&T> {
        let k = h.key();
        match self.slots.get(k.index as usize)? {
            Slot::Full { generation, value } if *generation == k.generation => Some(value),
            _ => None,
        }
    }

    /// The entry of `h`, if it still lives.
    pub fn get_mut(&mut self, h: H) -> Option<&mut T> {
        let k = h.key();
        match self.slots.get_mut(k.index as usize)? {
            Slot::Full { generation, value } if *generation == k.generation => Some(value),
            _ => None,
        }
    }

    /// Whether `h` names a live entry.
    pub fn contains(&self, h: H) -> bool {
        self.get(h).is_some()
    }

    /// Removes the entry of `h`; its handle (and every copy) turns stale.
    pub fn remove(&mut self, h: H) -> Option<T> {
        let k = h.key();
        let slot = self.slots.get_mut(k.index as usize)?;
        if !matches!(slot, Slot::Full { generation, .. } if *generation == k.generation) {
            return None;
        }
        let next = Slot::Free {
            generation: k.generation.wrapping_add(1),
        };
        let Slot::Full { value, .. } = std::mem::replace(slot, next) else {
            return None;
        };
        self.free.push(k.index);
        self.len -= 1;
        Some(value)
    }

    /// Live entries.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Live entries with their handles, in slot order.
    pub fn iter(&self) -> impl Iterator<Item = (H, &T)> {
        self.slots.iter().enumerate().filter_map(|(i, s)| match s {
            Slot::Full { generation, value } => Some((
                H::from_key(Key {
                    index: i as u32,
                    generation: *generation,
                }),
                value,
            )),
            Slot::Free { .. } => None,
        })
    }

    /// Handles of the live entries (a snapshot, for loops that change the slab).
    pub fn handles(&self) -> Vec<H> {
        self.iter().map(|(h, _)| h).collect()
    }
}

#[cfg(test)]
impl<H: Handle, T> Slab<H, T> {
    /// Live entries, mutable.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (H, &mut T)> {
        self.slots
            .iter_mut()
            .enumerate()
            .filter_map(|(i, s)| match s {
                Slot::Full { generation, value } => Some((
                    H::from_key(Key {
                        index: i as u32,
                        generation: *generation,
                    }),
                    value,
                )),
                Slot::Free { .. } => None,
            })
    }

    /// The `n`th live entry in slot order (tests).
    pub fn nth(&self, n: usize) -> (H, &T) {
        match self.iter().nth(n) {
            Some(e) => e,
            None => panic!("no entry {n}"),
        }
    }

    /// As [`nth`](Self::nth), mutable.
    pub fn nth_mut(&mut self, n: usize) -> (H, &mut T) {
        match self.iter_mut().nth(n) {
            Some(e) => e,
            None => panic!("no entry {n}"),
        }
    }
}

impl<H: Handle, T> std::ops::Index<H> for Slab<H, T> {
    type Output = T;
    /// Only for handles the caller just looked up or holds as live; a stale handle is a bug
    /// of the driver, never of input.
    fn index(&self, h: H) -> &T {
        match self.get(h) {
            Some(v) => v,
            None => unreachable!("stale handle {:?}", h.key()),
        }
    }
}

impl<H: Handle, T> std::ops::IndexMut<H> for Slab<H, T> {
    fn index_mut(&mut self, h: H) -> &mut T {
        match self.get_mut(h) {
            Some(v) => v,
            None => unreachable!("stale handle {:?}", h.key()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    handle!(
        /// A test handle.
        T
    );

    #[test]
    fn stale_handles_never_name_a_reused_slot() {
        let mut s: Slab<T, &str> = Slab::default();
        let a = s.insert("a");
        let b = s.insert("b");
        assert_eq!(s.remove(a), Some("a"));
        assert_eq!(s.get(a), None);
        let c = s.insert("c");
        assert_eq!(c.0.index, a.0.index, "the slot is reused");
        assert_eq!(s.get(a), None, "but the old handle stays stale");
        assert_eq!(s.remove(a), None);
        assert_eq!((s.get(b), s.get(c)), (Some(&"b"), Some(&"c")));
        assert_eq!(s.len(), 2);
        assert_eq!(Key::from_u64(c.0.to_u64()), c.0);
        let order: Vec<&str> = s.iter().map(|(_, v)| *v).collect();
        assert_eq!(order, vec!["c", "b"]);
    }
}
