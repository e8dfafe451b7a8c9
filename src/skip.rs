//! Tests that cannot do their job where they run (no CAP_SYS_TIME, not root) fail, unless the
//! person running them opts out knowingly: a test that passes by returning early tests nothing.
//! The e2e crate includes this very file as its own `skip` module (one rule, one variable).

/// The one opt-out, for the whole project: `LSTR_ALLOW_SKIP=1`. CI (tests/run-all.sh) never sets it.
pub const ALLOW_SKIP_ENV: &str = "LSTR_ALLOW_SKIP";

/// Called where `test` cannot run here, because of `why`: panics (the test fails and says why),
/// or with `LSTR_ALLOW_SKIP=1` prints that it skipped and returns (the caller then returns).
pub fn cannot_run(test: &str, why: &str) {
    if std::env::var(ALLOW_SKIP_ENV).is_ok_and(|v| v == "1") {
        eprintln!("SKIPPED {test}: {why} ({ALLOW_SKIP_ENV}=1)");
        return;
    }
    panic!(
        "{test} cannot run here: {why}. Run it as root with CAP_SYS_TIME (as CI does), or set \
         {ALLOW_SKIP_ENV}=1 to skip it knowingly"
    );
}
