//! Published ports, as `docker run -p` takes them: `HOSTPORT:GUESTPORT[/tcp|/udp]`.

use serde::{Deserialize, Serialize};

use crate::Error;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

/// Connections to the host's HOST port (arriving from outside the VM network) go to the
/// guest's GUEST port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Publish {
    pub host: u16,
    pub guest: u16,
    pub proto: Proto,
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        let p = match self.proto {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        };
        write!(f, "{}:{}/{p}", self.host, self.guest)
    }
}

impl std::str::FromStr for Publish {
    type Err = String;
    fn from_str(s: &str) -> Result<Publish, String> {
        let bad = || format!("{s:?}: expected HOSTPORT:GUESTPORT[/tcp|/udp], e.g. 8080:80");
        let (ports, proto) = match s.rsplit_once('/') {
            Some((p, "tcp")) => (p, Proto::Tcp),
            Some((p, "udp")) => (p, Proto::Udp),
            Some(_) => return Err(bad()),
            None => (s, Proto::Tcp),
        };
        let (h, g) = ports.split_once(':').ok_or_else(bad)?;
        let port = |p: &str| p.parse::<u16>().ok().filter(|&n| n != 0).ok_or_else(bad);
        Ok(Publish {
            host: port(h)?,
            guest: port(g)?,
            proto,
        })
    }
}

/// A host port may be published once per protocol.
pub fn check_unique(ports: &[Publish]) -> Result<(), Error> {
    for (i, p) in ports.iter().enumerate() {
        if ports[..i]
            .iter()
            .any(|q| q.host == p.host && q.proto == p.proto)
        {
            return Err(Error::Invalid(format!(
                "host port {} is published twice",
                p.host
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_as_docker_does() {
        let p: Publish = "8080:80".parse().unwrap();
        assert_eq!((p.host, p.guest, p.proto), (8080, 80, Proto::Tcp));
        let p: Publish = "53:5353/udp".parse().unwrap();
        assert_eq!((p.host, p.guest, p.proto), (53, 5353, Proto::Udp));
        assert_eq!(p.to_string(), "53:5353/udp");
        for bad in ["80", "0:80", "70000:80", "80:80/sctp", "a:b", ""] {
            assert!(bad.parse::<Publish>().is_err(), "{bad}");
        }
        let twice = ["80:80".parse().unwrap(), "80:81".parse().unwrap()];
        assert!(check_unique(&twice).is_err());
        let both = ["80:80".parse().unwrap(), "80:80/udp".parse().unwrap()];
        assert!(check_unique(&both).is_ok());
    }
}
