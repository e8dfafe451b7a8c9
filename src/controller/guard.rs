//! The confused-deputy rules, as pure functions of the objects involved, so every rule is unit
//! tested and the reconciler only asks. The controller may read and write Secrets its tenants may
//! not; these rules make sure a tenant who can create a `LabelStudioToken` borrows none of that:
//! - the PAT is read only from a Secret that opted in ([`LABEL_PAT_SOURCE`]), in the token
//!   resource's own namespace (the spec has no namespace field to point elsewhere);
//! - the PAT is sent only to the URL of a cluster-scoped connection whose namespace selector
//!   admits that namespace;
//! - the access token is written only into a Secret the token resource owns (created by us with a
//!   controller owner reference to it) or one that names it in [`ANNOTATION_TARGET_OF`];
//! - a rotated PAT is written back only into the one key of the PAT Secret the resource reads
//!   (same namespace and name, opted in), never into the target or any other Secret, and a lost
//!   rotation is repaired only with an access token of the PAT's own user.

use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::resources::{
    LabelStudioConnectionSpec, LabelStudioTokenSpec, ANNOTATION_TARGET_OF, LABEL_PAT_SOURCE,
};
use crate::{
    jwt::{self, CredentialKind},
    rotate::{RotateEvery, RotationPolicy},
    schedule::Policy,
    secret::Secret,
    values::{Dur, PositiveDur},
};

/// Why a token resource cannot be served, before any Label Studio call. Each maps to a condition
/// reason and a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// A field of the spec is invalid (which one: the static text).
    InvalidSpec(&'static str),
    /// The named connection does not exist.
    ConnectionNotFound,
    /// The connection's namespace selector does not admit this namespace.
    ConnectionNotAllowed,
    /// The connection itself is unusable (bad URL, http with requireHttps, bad CA bundle).
    ConnectionInvalid(&'static str),
    /// The PAT Secret is missing, lacks the opt-in label, or lacks the key.
    PatSecretUnavailable,
    /// The target Secret exists and is neither owned by this resource nor opted in for it.
    TargetNotOwned,
}

impl Refusal {
    /// The condition reason (closed set, snake_case like the metrics' reasons).
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::InvalidSpec(_) => "invalid_spec",
            Refusal::ConnectionNotFound => "connection_not_found",
            Refusal::ConnectionNotAllowed => "connection_not_allowed",
            Refusal::ConnectionInvalid(_) => "connection_invalid",
            Refusal::PatSecretUnavailable => "pat_secret_unavailable",
            Refusal::TargetNotOwned => "target_not_owned",
        }
    }

    /// The condition message: fixed text saying what to do.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::InvalidSpec(what) => what,
            Refusal::ConnectionNotFound => {
                "spec.connectionName names no LabelStudioConnection: ask a cluster admin to create it"
            }
            Refusal::ConnectionNotAllowed => {
                "the LabelStudioConnection's namespaceSelector does not admit this namespace"
            }
            Refusal::ConnectionInvalid(what) => what,
            Refusal::PatSecretUnavailable => {
                "the PAT Secret is missing, lacks the key, or lacks the label ls-token-refresher/pat-source=true (whoever may update the Secret sets it)"
            }
            Refusal::TargetNotOwned => {
                "spec.secretName is an existing Secret this resource does not own: choose a new name, or annotate that Secret ls-token-refresher/target-of=<this resource's name>"
            }
        }
    }
}

/// True for a DNS-1123 subdomain (the rule for Secret and most object names).
pub fn is_dns_subdomain(v: &str) -> bool {
    crate::values::is_object_name(v)
}

/// True for a valid Secret data key.
pub fn is_secret_key(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 253
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        && v != "."
        && v != ".."
}

/// Checks the spec and builds the token's timing policy from the controller's defaults.
pub fn policy_for(spec: &LabelStudioTokenSpec, defaults: &Policy) -> Result<Policy, Refusal> {
    if !is_dns_subdomain(&spec.connection_name) {
        return Err(Refusal::InvalidSpec(
            "spec.connectionName is not a valid object name",
        ));
    }
    if !is_dns_subdomain(&spec.pat_secret_ref.name) {
        return Err(Refusal::InvalidSpec(
            "spec.patSecretRef.name is not a valid Secret name",
        ));
    }
    if !is_secret_key(&spec.pat_secret_ref.key) {
        return Err(Refusal::InvalidSpec(
            "spec.patSecretRef.key is not a valid Secret key",
        ));
    }
    if !is_dns_subdomain(&spec.secret_name) {
        return Err(Refusal::InvalidSpec(
            "spec.secretName is not a valid Secret name",
        ));
    }
    if spec.secret_name == spec.pat_secret_ref.name {
        return Err(Refusal::InvalidSpec(
            "spec.secretName must differ from spec.patSecretRef.name (the PAT Secret is never written)",
        ));
    }
    let mut policy = *defaults;
    if let Some(f) = spec.refresh_fraction {
        if !(0.25..=0.95).contains(&f) {
            return Err(Refusal::InvalidSpec(
                "spec.refreshFraction must be between 0.25 and 0.95",
            ));
        }
        policy.fraction = f;
    }
    let dur = |v: &Option<String>, what: &'static str| -> Result<Option<Duration>, Refusal> {
        match v {
            None => Ok(None),
            Some(s) => s
                .parse::<Dur>()
                .map(|d| Some(d.0))
                .map_err(|_| Refusal::InvalidSpec(what)),
        }
    };
    if let Some(d) = dur(
        &spec.min_lead,
        "spec.minLead is not a duration (e.g. 30s, 2m)",
    )? {
        policy.min_lead = d;
    }
    if let Some(d) = dur(
        &spec.propagation_margin,
        "spec.propagationMargin is not a duration (e.g. 75s)",
    )? {
        policy.propagation_margin = d;
    }
    Ok(policy)
}

/// Checks the rotation fields of the spec (the rules of `run`'s `--rotate-pat-every` and
/// `--rotate-pat-before-expiry`); None when rotation is off.
pub fn rotation_for(spec: &LabelStudioTokenSpec) -> Result<Option<RotationPolicy>, Refusal> {
    let every = match &spec.rotate_pat_every {
        None => None,
        Some(s) => Some(s.parse::<RotateEvery>().map_err(|_| {
            Refusal::InvalidSpec("spec.rotatePatEvery is not a duration of at least 5s (e.g. 720h)")
        })?),
    };
    let before_expiry = match &spec.rotate_pat_before_expiry {
        None => None,
        Some(s) => Some(s.parse::<PositiveDur>().map_err(|_| {
            Refusal::InvalidSpec(
                "spec.rotatePatBeforeExpiry is not a positive duration (e.g. 168h)",
            )
        })?),
    };
    Ok(
        (every.is_some() || before_expiry.is_some()).then(|| RotationPolicy {
            every: every.map(|e| e.0),
            before_expiry: before_expiry.map(|b| b.0),
        }),
    )
}

/// The one place a rotated PAT may be written: a key of a Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteBack {
    /// The token resource's namespace.
    pub namespace: String,
    /// The PAT Secret's name.
    pub name: String,
    /// The PAT key.
    pub key: String,
}

/// Where the new PAT of a rotation for the token resource in `token_namespace` with `spec` may be
/// written back, given the PAT Secret `pat_secret` it read the PAT from: that Secret's PAT key,
/// only when the Secret is the one the spec names in the resource's own namespace, opted in, and
/// not the target. None: nowhere (no rotation).
pub fn pat_write_back(
    token_namespace: &str,
    spec: &LabelStudioTokenSpec,
    pat_secret: &ObjectMeta,
) -> Option<WriteBack> {
    let same_namespace = pat_secret.namespace.as_deref() == Some(token_namespace);
    let same_name = pat_secret.name.as_deref() == Some(spec.pat_secret_ref.name.as_str());
    let valid = is_dns_subdomain(&spec.pat_secret_ref.name)
        && is_secret_key(&spec.pat_secret_ref.key)
        && spec.pat_secret_ref.name != spec.secret_name;
    (same_namespace && same_name && valid && pat_secret_opted_in(pat_secret)).then(|| WriteBack {
        namespace: token_namespace.to_owned(),
        name: spec.pat_secret_ref.name.clone(),
        key: spec.pat_secret_ref.key.clone(),
    })
}

/// The access tokens among `tokens` that may repair a lost rotation of `pat`: access tokens (not
/// PATs or legacy tokens) of the PAT's own user. Listing and blacklisting PATs with another user's
/// token (a target Secret that held another PAT's token, or was edited) would kill that user's PAT.
pub fn recovery_candidates(pat: &Secret, tokens: Vec<Secret>) -> Vec<Secret> {
    let Some(user) = jwt::user_id(pat.expose()) else {
        return Vec::new();
    };
    tokens
        .into_iter()
        .filter(|t| matches!(jwt::classify(t), Ok(CredentialKind::Access(_))))
        .filter(|t| jwt::user_id(t.expose()).as_deref() == Some(user.as_str()))
        .collect()
}

/// Whether `connection` admits a token resource in a namespace with `namespace_labels`.
pub fn connection_admits(
    connection: &LabelStudioConnectionSpec,
    namespace_labels: Option<&BTreeMap<String, String>>,
) -> bool {
    connection
        .namespace_selector
        .as_ref()
        .is_none_or(|s| s.matches(namespace_labels))
}

/// Whether a Secret opted in as a PAT source.
pub fn pat_secret_opted_in(meta: &ObjectMeta) -> bool {
    meta.labels
        .as_ref()
        .and_then(|l| l.get(LABEL_PAT_SOURCE))
        .is_some_and(|v| v == "true")
}

/// What may be done with the target Secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetAccess {
    /// It does not exist: create it, owned by the token resource.
    Create,
    /// It is ours to update; apply only to the object with this uid (a Secret deleted and
    /// re-created by someone else in between is not written).
    Update {
        /// The uid seen.
        uid: String,
    },
    /// Not ours.
    Refuse,
}

/// Decides about the existing target Secret (`None`: it does not exist) for the token resource
/// `token_name` with uid `token_uid`.
pub fn target_access(
    existing: Option<&ObjectMeta>,
    token_name: &str,
    token_uid: &str,
) -> TargetAccess {
    let Some(meta) = existing else {
        return TargetAccess::Create;
    };
    let Some(uid) = meta.uid.clone() else {
        return TargetAccess::Refuse;
    };
    let owned = meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter().any(|r| {
            r.uid == token_uid && r.controller == Some(true) && r.kind == "LabelStudioToken"
        })
    });
    // Another controller's child is never ours, whatever annotation it carries.
    let controlled_by_other = meta.owner_references.as_ref().is_some_and(|refs| {
        refs.iter()
            .any(|r| r.controller == Some(true) && r.uid != token_uid)
    });
    let opted_in = meta
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_TARGET_OF))
        .is_some_and(|v| v == token_name);
    if owned || (opted_in && !controlled_by_other) {
        TargetAccess::Update { uid }
    } else {
        TargetAccess::Refuse
    }
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
    use proptest::prelude::*;

    use super::*;
    use crate::controller::resources::PatSecretRef;

    fn spec() -> LabelStudioTokenSpec {
        LabelStudioTokenSpec {
            connection_name: "ls".into(),
            pat_secret_ref: PatSecretRef {
                name: "pat".into(),
                key: "pat".into(),
            },
            secret_name: "token".into(),
            refresh_fraction: None,
            min_lead: None,
            propagation_margin: None,
            suspend: false,
            rotate_pat_every: None,
            rotate_pat_before_expiry: None,
        }
    }

    fn meta(uid: &str) -> ObjectMeta {
        ObjectMeta {
            name: Some("token".into()),
            uid: Some(uid.into()),
            ..Default::default()
        }
    }

    fn owner(uid: &str, controller: bool) -> OwnerReference {
        OwnerReference {
            api_version: "ls-token-refresher.io/v1alpha1".into(),
            kind: "LabelStudioToken".into(),
            name: "t".into(),
            uid: uid.into(),
            controller: Some(controller),
            block_owner_deletion: None,
        }
    }

    #[test]
    fn target_rules() {
        assert_eq!(target_access(None, "t", "u1"), TargetAccess::Create);
        // A stranger's Secret (e.g. a service account token or another app's) is refused.
        assert_eq!(
            target_access(Some(&meta("s")), "t", "u1"),
            TargetAccess::Refuse
        );
        let mut ours = meta("s");
        ours.owner_references = Some(vec![owner("u1", true)]);
        assert_eq!(
            target_access(Some(&ours), "t", "u1"),
            TargetAccess::Update { uid: "s".into() }
        );
        // Owned by another token resource of the same name (deleted and re-created): refused.
        assert_eq!(target_access(Some(&ours), "t", "u2"), TargetAccess::Refuse);
        // A non-controller owner reference is not ownership.
        let mut weak = meta("s");
        weak.owner_references = Some(vec![owner("u1", false)]);
        assert_eq!(target_access(Some(&weak), "t", "u1"), TargetAccess::Refuse);
        // Opt-in by annotation naming this resource, and only this one.
        let mut opted = meta("s");
        opted.annotations = Some([(ANNOTATION_TARGET_OF.into(), "t".into())].into());
        assert_eq!(
            target_access(Some(&opted), "t", "u1"),
            TargetAccess::Update { uid: "s".into() }
        );
        assert_eq!(
            target_access(Some(&opted), "other", "u1"),
            TargetAccess::Refuse
        );
        // ... unless another controller owns it.
        opted.owner_references = Some(vec![owner("u9", true)]);
        assert_eq!(target_access(Some(&opted), "t", "u1"), TargetAccess::Refuse);
    }

    #[test]
    fn pat_secret_must_opt_in_with_true() {
        let mut m = meta("s");
        assert!(!pat_secret_opted_in(&m));
        m.labels = Some([(LABEL_PAT_SOURCE.into(), "yes".into())].into());
        assert!(!pat_secret_opted_in(&m));
        m.labels = Some([(LABEL_PAT_SOURCE.into(), "true".into())].into());
        assert!(pat_secret_opted_in(&m));
    }

    #[test]
    fn spec_checks() {
        let d = Policy::default();
        assert!(policy_for(&spec(), &d).is_ok());
        let mut s = spec();
        s.secret_name = "pat".into();
        assert_eq!(policy_for(&s, &d).unwrap_err().reason(), "invalid_spec");
        let mut s = spec();
        s.refresh_fraction = Some(f64::NAN);
        assert!(policy_for(&s, &d).is_err());
        let mut s = spec();
        s.min_lead = Some("forever".into());
        assert!(policy_for(&s, &d).is_err());
        let mut s = spec();
        s.min_lead = Some("45s".into());
        s.refresh_fraction = Some(0.5);
        let p = policy_for(&s, &d).unwrap();
        assert_eq!(p.min_lead, Duration::from_secs(45));
        assert_eq!(p.fraction, 0.5);
    }

    #[test]
    fn rotation_fields_parse_like_the_run_flags() {
        assert_eq!(rotation_for(&spec()), Ok(None));
        let mut s = spec();
        s.rotate_pat_every = Some("5s".into());
        assert_eq!(
            rotation_for(&s),
            Ok(Some(RotationPolicy {
                every: Some(Duration::from_secs(5)),
                before_expiry: None
            }))
        );
        s.rotate_pat_before_expiry = Some("168h".into());
        assert_eq!(
            rotation_for(&s).unwrap().unwrap().before_expiry,
            Some(Duration::from_secs(168 * 3600))
        );
        for bad in ["4s", "0s", "forever", "", "-5s", "99999999999999999999h"] {
            let mut s = spec();
            s.rotate_pat_every = Some(bad.into());
            let r = rotation_for(&s).unwrap_err();
            assert_eq!(r.reason(), "invalid_spec", "{bad}");
            assert!(r.message().contains("spec.rotatePatEvery"), "{bad}");
        }
        for bad in ["0s", "soon", "-1h"] {
            let mut s = spec();
            s.rotate_pat_before_expiry = Some(bad.into());
            let r = rotation_for(&s).unwrap_err();
            assert!(r.message().contains("spec.rotatePatBeforeExpiry"), "{bad}");
        }
    }

    #[test]
    fn write_back_only_into_the_resources_own_opted_in_pat_secret_key() {
        let mut pat = meta("p");
        pat.name = Some("pat".into());
        pat.namespace = Some("team".into());
        pat.labels = Some([(LABEL_PAT_SOURCE.into(), "true".into())].into());
        let mut s = spec();
        s.pat_secret_ref.key = "my-pat".into();
        assert_eq!(
            pat_write_back("team", &s, &pat),
            Some(WriteBack {
                namespace: "team".into(),
                name: "pat".into(),
                key: "my-pat".into()
            })
        );
        // Another namespace's Secret of that name, another Secret, a Secret not opted in.
        assert_eq!(pat_write_back("other", &s, &pat), None);
        let mut other = pat.clone();
        other.name = Some("bystander".into());
        assert_eq!(pat_write_back("team", &s, &other), None);
        let mut unlabelled = pat.clone();
        unlabelled.labels = None;
        assert_eq!(pat_write_back("team", &s, &unlabelled), None);
        let mut no_ns = pat.clone();
        no_ns.namespace = None;
        assert_eq!(pat_write_back("team", &s, &no_ns), None);
        // Never the target, never a key that is not a key.
        let mut to_target = s.clone();
        to_target.secret_name = "pat".into();
        assert_eq!(pat_write_back("team", &to_target, &pat), None);
        let mut bad_key = s.clone();
        bad_key.pat_secret_ref.key = "../x".into();
        assert_eq!(pat_write_back("team", &bad_key, &pat), None);
    }

    #[test]
    fn recovery_only_with_access_tokens_of_the_pats_user() {
        use crate::jwt::tests::make_jwt;
        let counter = std::cell::Cell::new(0);
        let jwt = |kind: &str, user: &str| {
            counter.set(counter.get() + 1);
            let n = counter.get();
            Secret::new(make_jwt(&format!(
                r#"{{"token_type":"{kind}","exp":4000000000,"iat":1900000000,"jti":"j{n}","user_id":{user}}}"#
            )))
        };
        let pat = jwt("refresh", "\"7\"");
        let mine = jwt("access", "\"7\"");
        let mine_numeric = jwt("access", "7");
        let theirs = jwt("access", "\"8\"");
        let another_pat = jwt("refresh", "\"7\"");
        let got = recovery_candidates(
            &pat,
            vec![
                theirs.clone(),
                mine.clone(),
                another_pat,
                Secret::new("not a jwt"),
                mine_numeric.clone(),
            ],
        );
        assert_eq!(got, vec![mine.clone(), mine_numeric]);
        // A PAT without a user names nobody: no candidate at all.
        let anonymous = Secret::new(make_jwt(r#"{"token_type":"refresh","jti":"x"}"#));
        assert!(recovery_candidates(&anonymous, vec![mine, theirs]).is_empty());
    }

    proptest! {
        /// Generated hostile names (path tricks, namespaces smuggled with '/', unicode, controls,
        /// overlong) are refused by the same rule the apiserver uses, and never panic.
        #[test]
        fn hostile_names_are_refused(name in prop_oneof![
            "[a-z0-9./_ -]{0,8}/[a-z0-9.-]{1,8}",
            "\\PC{0,12}",
            "[a-z]{250,260}",
            "\\.{1,3}[a-z]{0,3}",
            "[a-z0-9]{1,5}[\\x00-\\x1f\\x7f][a-z]{0,3}",
        ]) {
            let ok = is_dns_subdomain(&name);
            if ok {
                prop_assert!(name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.'));
                prop_assert!(!name.contains('/') && name.len() <= 253);
            }
            let mut s = spec();
            s.secret_name = name.clone();
            prop_assert_eq!(policy_for(&s, &Policy::default()).is_ok(), ok && name != "pat");
            let mut s = spec();
            s.pat_secret_ref.key = name.clone();
            let key_ok = is_secret_key(&name);
            prop_assert_eq!(policy_for(&s, &Policy::default()).is_ok(), key_ok);
            prop_assert!(!key_ok || !name.contains('/'));
        }
    }
}
