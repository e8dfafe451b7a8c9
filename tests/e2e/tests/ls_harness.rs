//! Proves the real-Label-Studio harness (`label_studio`, `ls_api`) and the server facts the refresher relies on
//! (see ../shared/docs/label-studio-token-api.md). Each test owns its own Label Studio instance;
//! cargo runs them in parallel threads. Tokens are asserted on, never printed.

use std::time::Duration;

use ls_token_refresher_e2e::{
    clock::sleep_past,
    jwt::jwt_claims,
    label_studio::{provision, LabelStudio, LsOptions},
    ls_api::detail,
};

fn is_hex40(s: &str) -> bool {
    s.len() == 40
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

#[tokio::test]
async fn pat_refresh_gives_access_with_configured_ttl_that_expires() {
    const TTL: i64 = 20;
    let ls = LabelStudio::start_with_ttl(TTL as u64).await;
    assert!(ls.url().starts_with("http://127.0.0.1:"));
    assert!(ls.pid().is_some());
    assert!(ls.log_path().is_file());
    if let Some(rss) = ls.rss_bytes() {
        eprintln!("label-studio RSS after start: {} MiB", rss / (1024 * 1024));
    }

    let pat = ls.api().create_pat().await;
    let c = jwt_claims(&pat);
    assert_eq!(c["token_type"], "refresh");
    assert_eq!(c["user_id"], "1", "user_id is a string");
    assert!(c["exp"].as_i64().unwrap() - c["iat"].as_i64().unwrap() > 100 * 365 * 86400);

    let (status, body) = ls.api().refresh(&pat).await;
    assert_eq!(status, 200, "{}", detail(&body));
    let obj = body.as_object().expect("JSON object");
    assert_eq!(
        obj.len(),
        1,
        "stock refresh body is exactly {{\"access\": …}} (no rotation)"
    );
    let access = obj["access"].as_str().unwrap().to_string();
    let a = jwt_claims(&access);
    assert_eq!(a["token_type"], "access");
    assert_eq!(a["user_id"], "1");
    let exp = a["exp"].as_i64().unwrap();
    assert_eq!(
        exp - a["iat"].as_i64().unwrap(),
        TTL,
        "exp - iat = configured TTL"
    );

    assert_eq!(ls.api().whoami(&format!("Bearer {access}")).await, 200);
    assert_eq!(
        ls.api().whoami(&format!("Bearer {pat}")).await,
        401,
        "a PAT is not a bearer token"
    );
    assert_eq!(ls.api().whoami("Bearer garbage").await, 401);
    let (s, b) = ls.api().refresh(&access).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token has wrong type"));

    // One PAT can serve many refreshes, and the PAT stays valid.
    let access2 = ls.api().access_token(&pat).await;
    assert_eq!(ls.api().whoami(&format!("Bearer {access2}")).await, 200);

    // Only one valid PAT per user: create_pat() revokes the existing one on 409.
    let pat2 = ls.api().create_pat().await;
    assert_ne!(pat2, pat);
    let (s, b) = ls.api().refresh(&pat).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is blacklisted"));
    // ... but access tokens minted from it live until their own exp.
    assert_eq!(ls.api().whoami(&format!("Bearer {access}")).await, 200);

    sleep_past(exp, Duration::from_millis(1500)).await;
    assert_eq!(
        ls.api().whoami(&format!("Bearer {access}")).await,
        401,
        "expired access token"
    );
    let fresh = ls.api().access_token(&pat2).await;
    assert_eq!(ls.api().whoami(&format!("Bearer {fresh}")).await, 200);
}

#[tokio::test]
async fn org_switches_jwt_off_and_legacy_on() {
    let ls = LabelStudio::start(LsOptions::default()).await;
    assert_eq!(
        ls.api().org_tokens().await,
        (true, false),
        "stock org: JWT on, legacy off"
    );
    let pat = ls.api().create_pat().await;
    let legacy = ls.api().legacy_token().await;
    assert!(is_hex40(&legacy), "legacy token is 40 lowercase hex chars");
    assert_eq!(
        ls.api().whoami(&format!("Token {legacy}")).await,
        401,
        "legacy off"
    );
    let (s, b) = ls.api().refresh(&legacy).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is invalid"));

    // JWT off: refresh still issues an access token, but the API rejects it.
    ls.api().set_org_tokens(false, true).await;
    let (status, body) = ls.api().refresh(&pat).await;
    assert_eq!(status, 200, "{}", detail(&body));
    let access = body["access"].as_str().unwrap().to_string();
    assert_eq!(ls.api().whoami(&format!("Bearer {access}")).await, 401);
    // Legacy on: `Token <legacy>` works (scheme case-insensitive).
    assert_eq!(ls.api().legacy_token().await, legacy);
    assert_eq!(ls.api().whoami(&format!("Token {legacy}")).await, 200);
    assert_eq!(ls.api().whoami(&format!("token {legacy}")).await, 200);
    assert_eq!(ls.api().whoami(&format!("Token {pat}")).await, 401);

    let legacy2 = ls.api().reset_legacy_token().await;
    assert!(is_hex40(&legacy2));
    assert_ne!(legacy2, legacy);
    assert_eq!(
        ls.api().whoami(&format!("Token {legacy}")).await,
        401,
        "old legacy token revoked"
    );
    assert_eq!(ls.api().whoami(&format!("Token {legacy2}")).await, 200);

    // Back to stock: the access token minted while JWT was off now works, legacy is refused.
    ls.api().set_org_tokens(true, false).await;
    assert_eq!(ls.api().whoami(&format!("Bearer {access}")).await, 200);
    assert_eq!(ls.api().whoami(&format!("Token {legacy2}")).await, 401);
}

#[tokio::test]
async fn blacklist_rotate_and_short_lived_pats() {
    let ls = LabelStudio::start(LsOptions::default()).await;
    let pat = ls.api().create_pat().await;
    assert_eq!(ls.api().refresh(&pat).await.0, 200);
    ls.api().blacklist(&pat).await;
    let (s, b) = ls.api().refresh(&pat).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is blacklisted"));
    let (s, b) = ls
        .api()
        .post_json(
            "/api/token/blacklist/",
            None,
            &serde_json::json!({ "refresh": pat }),
        )
        .await;
    assert_eq!(
        (s, detail(&b).as_str()),
        (404, "Token is invalid or already blacklisted.")
    );

    // Rotation: new PAT, the old one is blacklisted at once.
    let pat2 = ls.api().create_pat().await;
    let access = ls.api().access_token(&pat2).await;
    let pat3 = ls.api().rotate(&access, &pat2).await;
    assert_ne!(pat3, pat2);
    let (s, b) = ls.api().refresh(&pat2).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is blacklisted"));
    assert_eq!(ls.api().refresh(&pat3).await.0, 200);

    // A PAT with a short lifetime minted from the Django side.
    // (8 s: minting takes 5-13 s of Django start-up on a loaded 2-core box, the clock starts at its end.)
    let short = ls.mint_short_pat(8).await;
    let c = jwt_claims(&short);
    assert_eq!(c["token_type"], "refresh");
    let exp = c["exp"].as_i64().unwrap();
    assert_eq!(exp - c["iat"].as_i64().unwrap(), 8);
    let access = ls.api().access_token(&short).await;
    assert_eq!(ls.api().whoami(&format!("Bearer {access}")).await, 200);
    sleep_past(exp, Duration::from_millis(1500)).await;
    let (s, b) = ls.api().refresh(&short).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is expired"));
    // It can be blacklisted like any other PAT (the OutstandingToken row exists): mint another one.
    let short2 = ls.mint_short_pat(3600).await;
    assert_eq!(ls.api().refresh(&short2).await.0, 200);
    ls.api().blacklist(&short2).await;
    let (s, b) = ls.api().refresh(&short2).await;
    assert_eq!((s, detail(&b).as_str()), (401, "Token is blacklisted"));
}

#[tokio::test]
async fn restart_keeps_url_and_pat_and_drop_cleans_up() {
    let mut ls = LabelStudio::start(LsOptions::default()).await;
    let pat = ls.api().create_pat().await;
    let access = ls.api().access_token(&pat).await;
    let url = ls.url();
    let pid = ls.pid().unwrap();

    ls.stop();
    assert!(!ls.is_running());
    assert!(ls.pid().is_none());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", ls.port())).is_err(),
        "nothing listens while stopped"
    );
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "process gone after stop"
    );

    ls.restart().await;
    assert_eq!(ls.url(), url, "same URL after restart");
    assert_ne!(ls.pid().unwrap(), pid);
    assert_eq!(
        ls.api().whoami(&format!("Bearer {access}")).await,
        200,
        "same signing key"
    );
    let access2 = ls.api().access_token(&pat).await;
    assert_eq!(ls.api().whoami(&format!("Bearer {access2}")).await, 200);
    // Session-based helpers keep working (the session lives in the DB).
    assert_eq!(ls.api().list_pats().await.len(), 1);

    // restart() on a running server also works.
    let pid2 = ls.pid().unwrap();
    ls.restart().await;
    assert_eq!(ls.url(), url);
    assert_eq!(ls.api().refresh(&pat).await.0, 200);

    // The signing key is the harness's own hex key, and django-environ (which Label Studio reads `.env`
    // with) gives it back as written. Label Studio's self-generated key would contain punctuation and,
    // one time in 50, start with `$`, which django-environ reads as '' (shown below): a new key on every
    // start and PATs invalid after a restart (a CI failure of e2e_label_studio's restart test).
    let env_file = std::fs::read_to_string(ls.data_dir().join(".env")).unwrap();
    let keys: Vec<&str> = env_file
        .lines()
        .filter_map(|l| l.strip_prefix("SECRET_KEY="))
        .collect();
    assert_eq!(keys.len(), 1, "exactly one SECRET_KEY line in .env");
    assert!(
        keys[0].len() == 64 && keys[0].bytes().all(|b| b.is_ascii_hexdigit()),
        "the signing key is the harness's hex key, not one Label Studio generated"
    );
    let reread = |file: &std::path::Path| {
        let out = std::process::Command::new(&provision().python)
            .arg("-c")
            .arg("import environ,sys; environ.Env.read_env(sys.argv[1]); print(environ.Env().str('SECRET_KEY', ''))")
            .arg(file)
            .env_clear()
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .trim_end()
            .to_string()
    };
    assert!(
        reread(&ls.data_dir().join(".env")) == keys[0],
        "key re-reads as written"
    );
    let dollar = ls.root_dir().join("dollar.env");
    std::fs::write(&dollar, "SECRET_KEY=$abc0123456789\n").unwrap();
    assert_eq!(reread(&dollar), "", "django-environ still drops a '$' key");

    let pid3 = ls.pid().unwrap();
    let root = ls.root_dir().to_path_buf();
    drop(ls);
    for p in [pid2, pid3] {
        assert!(
            !std::path::Path::new(&format!("/proc/{p}")).exists(),
            "process {p} gone after drop"
        );
    }
    assert!(!root.exists(), "temp dir removed on drop");
}

#[tokio::test]
async fn instances_are_isolated_and_busy_ports_are_detected() {
    let a = LabelStudio::start(LsOptions::default()).await;
    // Ask for A's port: Label Studio would silently take the next one; the harness must notice and
    // retry elsewhere instead of mistaking A's /health for B's.
    let b = LabelStudio::start(LsOptions {
        port: Some(a.port()),
        legacy_enabled_at_start: true,
        ..LsOptions::default()
    })
    .await;
    assert_ne!(a.port(), b.port());
    assert_ne!(a.pid(), b.pid());
    assert_ne!(a.data_dir(), b.data_dir());
    assert!(
        b.log_tail(10_000)
            .contains(&format!("Port {} is in use.", a.port())),
        "B's first attempt saw A's port busy"
    );

    assert_eq!(a.api().org_tokens().await, (true, false));
    assert_eq!(
        b.api().org_tokens().await,
        (true, true),
        "legacy_enabled_at_start"
    );

    // Own signing key per instance: a PAT of A is invalid on B.
    let pat_a = a.api().create_pat().await;
    let pat_b = b.api().create_pat().await;
    assert_eq!(a.api().refresh(&pat_a).await.0, 200);
    assert_eq!(b.api().refresh(&pat_b).await.0, 200);
    let (s, body) = b.api().refresh(&pat_a).await;
    assert_eq!((s, detail(&body).as_str()), (401, "Token is invalid"));
    // Own legacy token per instance.
    let (la, lb) = (a.api().legacy_token().await, b.api().legacy_token().await);
    assert_ne!(la, lb);
    assert_eq!(b.api().whoami(&format!("Token {lb}")).await, 200);
    assert_eq!(b.api().whoami(&format!("Token {la}")).await, 401);
}
