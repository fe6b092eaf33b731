//! Exit statuses, one scheme for every command (documented in the README, "Exit status"):
//! 0 ok, 1 a check found problems, 2 usage or refused input (and any failure not below),
//! 3 not found, 4 verification or trust failure, 5 a service could not be reached (a
//! repository, the network, starlingd). The class comes from the first error in the chain
//! that has one, so context added on the way keeps it. `run` and `exec` exit with the
//! command's status, and 125 when they fail themselves.

use std::process::ExitCode;

pub const PROBLEMS: u8 = 1;
pub const USAGE: u8 = 2;
pub const NOT_FOUND: u8 = 3;
pub const UNTRUSTED: u8 = 4;
pub const UNREACHABLE: u8 = 5;
/// `run` and `exec` failing themselves (docker's 125), where any other status would be read
/// as the command's own.
pub const OWN_FAILURE: u8 = 125;

pub fn code(e: &anyhow::Error) -> ExitCode {
    ExitCode::from(class(e))
}

pub fn class(e: &anyhow::Error) -> u8 {
    e.chain().find_map(one).unwrap_or(USAGE)
}

fn one(cause: &(dyn std::error::Error + 'static)) -> Option<u8> {
    use starling_image::error::Error as Image;
    use starling_repo::error::Error as Repo;
    use starling_store::Error as Store;
    if let Some(e) = cause.downcast_ref::<Image>() {
        return match e {
            Image::UnknownImage(_)
            | Image::UnknownVersion { .. }
            | Image::MissingSource(_)
            | Image::NoDefaultTag { .. } => Some(NOT_FOUND),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<Repo>() {
        return match e {
            Repo::UnknownImage(_) | Repo::NotTrusted(_) => Some(NOT_FOUND),
            // tough reports a repository it could not reach as a metadata failure.
            Repo::Tuf { source, .. }
                if starling_repo::error::network_failure(source.as_ref()).is_some() =>
            {
                Some(UNREACHABLE)
            }
            Repo::Tuf { .. } | Repo::BadObject { .. } | Repo::OtherRoot { .. } => Some(UNTRUSTED),
            Repo::Fetch { .. } | Repo::Unreachable { .. } => Some(UNREACHABLE),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<Store>() {
        return match e {
            Store::NotAStore(_) | Store::NotFound(_) => Some(NOT_FOUND),
            Store::Corrupt { .. } => Some(UNTRUSTED),
            Store::Unavailable { .. } => Some(UNREACHABLE),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<starling_registry::Error>() {
        use starling_registry::Error as R;
        return match e {
            R::NotFound { .. } => Some(NOT_FOUND),
            R::Unauthorized { .. } | R::BadContent { .. } => Some(UNTRUSTED),
            R::Unreachable { .. } => Some(UNREACHABLE),
            _ => None,
        };
    }
    if let Some(e) = cause.downcast_ref::<starling_daemon::client::ClientError>() {
        use starling_daemon::client::ClientError as C;
        return match e {
            C::Unreachable(..) => Some(UNREACHABLE),
            C::Daemon { status: 404, .. } => Some(NOT_FOUND),
            C::Daemon { status: 502, .. } => Some(UNREACHABLE),
            _ => None,
        };
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_classified_cause_decides_and_context_keeps_it() {
        let e = anyhow::Error::new(starling_image::error::Error::UnknownImage("a:b".into()))
            .context("inspecting a:b");
        assert_eq!(class(&e), NOT_FOUND);
        let e = anyhow::Error::new(starling_repo::error::Error::Fetch {
            url: "http://x/".into(),
            reason: "refused".into(),
        });
        assert_eq!(class(&e), UNREACHABLE);
        let e = anyhow::Error::new(starling_repo::error::Error::Tuf {
            what: "timestamp".into(),
            source: "expired".into(),
        });
        assert_eq!(class(&e), UNTRUSTED);
        assert_eq!(class(&anyhow::anyhow!("anything else")), USAGE);
    }
}
