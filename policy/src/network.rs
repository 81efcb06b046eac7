//! The on-site lookup: longest-prefix match of a client address over every institution's
//! networks.
//!
//! One hash map per prefix length that occurs, probed from the longest length down. Real
//! policies use a handful of distinct lengths, so a lookup is a few masked hash probes,
//! independent of how many networks there are. Entries are inserted in institution-id
//! order and the first one wins, which is the policy's tie rule (the smallest id).

use std::net::IpAddr;

use ipnet::IpNet;
use rustc_hash::FxHashMap;

/// Networks to values (the policy stores each institution's index). Generic so that this
/// module knows nothing of the policy model it serves.
#[derive(Debug)]
pub(crate) struct NetworkTable<V> {
    /// (prefix length, masked address → value), longest first.
    v4: Vec<(u8, FxHashMap<u32, V>)>,
    v6: Vec<(u8, FxHashMap<u128, V>)>,
}

impl<V> Default for NetworkTable<V> {
    fn default() -> Self {
        Self {
            v4: Vec::new(),
            v6: Vec::new(),
        }
    }
}

fn mask4(addr: u32, len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        addr & (u32::MAX << (32 - len))
    }
}

fn mask6(addr: u128, len: u8) -> u128 {
    if len == 0 {
        0
    } else {
        addr & (u128::MAX << (128 - len))
    }
}

impl<V: Copy> NetworkTable<V> {
    /// Adds a network. Call in institution-id order: an existing entry is kept.
    pub fn insert(&mut self, net: IpNet, value: V) {
        match net {
            IpNet::V4(n) => {
                let len = n.prefix_len();
                let key = mask4(u32::from(n.network()), len);
                slot(&mut self.v4, len).entry(key).or_insert(value);
            }
            IpNet::V6(n) => {
                let len = n.prefix_len();
                let key = mask6(u128::from(n.network()), len);
                slot(&mut self.v6, len).entry(key).or_insert(value);
            }
        }
    }

    pub fn lookup(&self, ip: IpAddr) -> Option<V> {
        match ip {
            IpAddr::V4(a) => {
                let a = u32::from(a);
                self.v4
                    .iter()
                    .find_map(|(len, map)| map.get(&mask4(a, *len)).copied())
            }
            IpAddr::V6(a) => {
                // An IPv4-mapped IPv6 address (a dual-stack listener) is the IPv4 client.
                if let Some(v4) = a.to_ipv4_mapped() {
                    return self.lookup(IpAddr::V4(v4));
                }
                let a = u128::from(a);
                self.v6
                    .iter()
                    .find_map(|(len, map)| map.get(&mask6(a, *len)).copied())
            }
        }
    }
}

fn slot<K, V>(levels: &mut Vec<(u8, FxHashMap<K, V>)>, len: u8) -> &mut FxHashMap<K, V> {
    let pos = match levels.iter().position(|(l, _)| *l <= len) {
        Some(p) if levels[p].0 == len => p,
        Some(p) => {
            levels.insert(p, (len, FxHashMap::default()));
            p
        }
        None => {
            levels.push((len, FxHashMap::default()));
            levels.len() - 1
        }
    };
    &mut levels[pos].1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn longest_prefix_wins_and_ties_keep_the_first() {
        let mut t = NetworkTable::<u32>::default();
        t.insert(net("192.0.2.0/24"), 0);
        t.insert(net("192.0.2.16/28"), 1);
        t.insert(net("192.0.2.16/28"), 2);
        t.insert(net("2001:db8::/32"), 3);
        t.insert(net("2001:db8:1::/48"), 4);
        assert_eq!(t.lookup("192.0.2.17".parse().unwrap()), Some(1));
        assert_eq!(t.lookup("192.0.2.200".parse().unwrap()), Some(0));
        assert_eq!(t.lookup("198.51.100.1".parse().unwrap()), None);
        assert_eq!(t.lookup("2001:db8:1::5".parse().unwrap()), Some(4));
        assert_eq!(t.lookup("2001:db8:2::5".parse().unwrap()), Some(3));
        assert_eq!(t.lookup("::ffff:192.0.2.18".parse().unwrap()), Some(1));
    }

    #[test]
    fn default_route_and_host_routes() {
        let mut t = NetworkTable::<u32>::default();
        t.insert(net("0.0.0.0/0"), 7);
        t.insert(net("203.0.113.9/32"), 8);
        assert_eq!(t.lookup("203.0.113.9".parse().unwrap()), Some(8));
        assert_eq!(t.lookup("203.0.113.10".parse().unwrap()), Some(7));
    }
}
