//! JWT verification against a JWKS over real HTTP: RS256 and ES256 keys
//! served by a local JWKS endpoint, Keycloak-style role claims, expiry,
//! issuer/audience, forged signatures, `alg: none`, RSA-public-key-as-HMAC
//! confusion, key rotation and role checks on the payment and admin routes.
//!
//! The keys below were generated with `openssl genpkey` for this test only.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use paynode_tests::{payment_body, test_config, TestNode};
use serde_json::{json, Value};

/// Published as `rsa-1`.
const RSA_A: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQCpEJV5r2NoPrMx
178D6CA0YeVTvSPecCwV7ftZBkz2/FnuzNxuqUBQ37vTv7ZjrwK/+5AXioG1U/RX
/2Via5ujS0n8FJkjLPIa1++bpucDb4TNuQx8fQTTaJBQzSiEmN8vhN6sceLZBviK
SnW1+JbZItg+UqgYPcUIK+yxg0DXpqFHBTfqOMDlITd1wmdBgwDxM0p0HMulbSye
KJYy/hNo15i1A96O7f7jQLajja58YcakjGk1icDUhj6ElR2AE4sngI5UYwNW0rFF
IVGs+HlRS1t9lfcNtikeykSkAaglDS4YeXCyUOTVCXBSs6g5Lnv1MUXy8fdT6LQ6
6rtjzterAgMBAAECggEAIqnIy+s+6Xe5i+WdP3LPb44G0/V6rje3gkOJ/kXBb/5r
ff+4zmObUTmeLBspjSSr3qr4bysxzvjIp2Yw5k4D2iYspCehAkpL1V8ivHoq8VRj
GT7wpXGIlMPimv6FaTJiyD5o3Vh4V2ELgmcj3Ux7uUdgqN6PonC/vh4raHXtzIkC
0XaC33xuD9Z0sJ5CS5VJobL5EGpmoKqeLCO1o4P21801c8vFam9mjc1pGhMcBWOX
6MUYtb1qRsKDGpSuTzSAlwXX0XtbIUC9N0sfP3/1sadyzzmK9QRUvimnQSPpBugY
Hvkl8FWn2o6fFuDYUEPPn33rYnZlf3pX8JaHCpuO6QKBgQDmwfEHHltiGPRN/opf
RRPn/BjlC0CGokaYzEsknmzk1ZlvIUQI2BGMOcxxS2dyHe9sjrUQZJgbfDt4N+ME
VgfylI5lbe/iBowUiXrwQlKjNtxdrCW9/KxEFWZYmED3V/skrktISXIDAmw4WfLn
NFH0zxgz2ySQI5QmfREZKidgDQKBgQC7jwSGCNMvqHs+Q6CbyyK7xmU8hFMJwnvl
D8RMp0172qETLAu24mrNvrxdb4qBBbq+So7ACtcWVpTZ03Qkyb3eRllixgoHQhDN
AoQ10GZe8O+VMQPQdgvS0E2pWWetVkx8xcbNmWdKORDoiPBSpj9aJHy7vhw9kBaI
KSQw023wlwKBgDOzAehBYeHxi1KqE6BSnqob7gvq4HMJil2Tb8ZthCIkxPKD9nUw
y4WqMWa0qSGFGW4t7t0UXIvT4pMFmmQPTkqIA/svjU4Lf3jecF/BzDfrA6Ys+mu9
X28FiF+TBQMlgAvwzMcORW/tLAfYBzbLnw0FFPwRPfjZL8kLvjfwHNBFAoGARniG
CpZmQxHavJpMTj0U39i7UPGnAZPBWV+DMgnqYw7SVpHGFQEdgBCaVcEDGVc9wyHg
YOexyQLfCrkYenoSjOGB1Er0maWJCn5XjqCu1h1Q541zEXBJIPyDMY4WFlrGglsN
R1LMLGckozpQkb1FMGllNGVJ1xe8X4yVvIK0XCECgYEAu+MogfpM6v+SQgSBqDAX
5nINnUyl+WmCMvq7mAdck0xKgpihf4PL3U3K2lF4tTnUVcL4twIVEFCVPsJsvcaj
r6zg059TIivgDmSXUcIF19ZVba8FPIdhRiNu5ElylrsbdeQcFWowRrq6YjtJoSoh
jFyzZdgYtYGmo2NoaSgjaSo=
-----END PRIVATE KEY-----
";
const RSA_A_PUBLIC: &str = "\
-----BEGIN PUBLIC KEY-----
MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEAqRCVea9jaD6zMde/A+gg
NGHlU70j3nAsFe37WQZM9vxZ7szcbqlAUN+707+2Y68Cv/uQF4qBtVP0V/9lYmub
o0tJ/BSZIyzyGtfvm6bnA2+EzbkMfH0E02iQUM0ohJjfL4TerHHi2Qb4ikp1tfiW
2SLYPlKoGD3FCCvssYNA16ahRwU36jjA5SE3dcJnQYMA8TNKdBzLpW0sniiWMv4T
aNeYtQPeju3+40C2o42ufGHGpIxpNYnA1IY+hJUdgBOLJ4COVGMDVtKxRSFRrPh5
UUtbfZX3DbYpHspEpAGoJQ0uGHlwslDk1QlwUrOoOS579TFF8vH3U+i0Ouq7Y87X
qwIDAQAB
-----END PUBLIC KEY-----
";
const RSA_A_N: &str = "qRCVea9jaD6zMde_A-ggNGHlU70j3nAsFe37WQZM9vxZ7szcbqlAUN-707-2Y68Cv_uQF4qBtVP0V_9lYmubo0tJ_BSZIyzyGtfvm6bnA2-EzbkMfH0E02iQUM0ohJjfL4TerHHi2Qb4ikp1tfiW2SLYPlKoGD3FCCvssYNA16ahRwU36jjA5SE3dcJnQYMA8TNKdBzLpW0sniiWMv4TaNeYtQPeju3-40C2o42ufGHGpIxpNYnA1IY-hJUdgBOLJ4COVGMDVtKxRSFRrPh5UUtbfZX3DbYpHspEpAGoJQ0uGHlwslDk1QlwUrOoOS579TFF8vH3U-i0Ouq7Y87Xqw";
/// Never published: forges signatures under `rsa-1`.
const RSA_B: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvgIBADANBgkqhkiG9w0BAQEFAASCBKgwggSkAgEAAoIBAQCu0tx4Ev9TBMBO
z8jwD/wVYLicWkpV5sf7//qAwtjIaBSInVSGg2Jq2RPp3zJmsgbwt6tZh6/a2S+i
GKI2+RwOehmoDS9mmI59GH1qnTOMd5u13s7p66oiUH/o7Ngp41W0M51XGL4ZnBtc
6raYezXh2R4Mb06zxoaC+QY4xhuJ7zKAwe2JQ0ie2RCf5KpmW2WQeOyIFX9oCCn2
BmfzA9EfZnzDuHn43kt9uIvsh6MrPGpttXlz9KSW/ONEgLCS5DeazTwdaMXt9jhC
FA5OMS2rSJFtgQQcj7cZ98RK1o2qHyscGY0DqDYCZ9PEmyR0sShdq3eBqQPri/Ca
fDlrhDt/AgMBAAECggEANhVYjDMAVvwAzEDevlmLmEd4RTJvjbycAJszsXLV4sXE
GHFnrUdnAnwOe4sHihqoJ/8CHOvrnM4UvNZXFJ+jLN1cI4+Uqu4mIpAZeIqSYHG+
M5jutRIpa30w3OusgeTo5hsToVavtLeFBY09GNYBGNH0yE8E73vKsCj+4kBzU4uv
xik5tIWadYVN8y8bet6PSQllf0ORHHWCStvNohN/4uaWtoxRVIWfn2FoLWxndNAb
Y3sQwiuzQq1Va+c610/ZmSqPP3ZLv0ApBOh08+Nqq5tGa1/wELzxk4x4EVWWlgnm
Cmmk/87bPu/uRwCjYlemzPWZaYwCjRxV99SCPhODcQKBgQDZ2xeaw9it2/lZTg1V
8+24Di3OYxj4snWTfXp/xHcdL1yXUI/cK64i2NF8hLvwexYRYiqo4EUOP2YU/d1i
Qjc54MNM4jwHLUOfMW1BqmZipZSnOa7JajDOh9BOSZOTkY/ik+XoecYv9IpHQDGR
RjuSqAS/FBBkyPbvjJhbgQPh0QKBgQDNbvKRlF02014KTw5kkLTto4SutJ1EAibq
r7LfgKPy+Kz2XJATJlbqIriPxuSEbWxXZW0M9G0FKxDvruUH9wez1ClU9TdMZGKR
BV6yRVo4D1GXJf8svfZBInoLXl5yg+Fppd9EE9mweRbQiCNqhhTzbGyJyIJnWUuC
aaYLri/MTwKBgG77B7lVz8ox54KxGmYRD6bVwkwDe7Ml5nOuVntEMJHzkK2c4sx8
jAdAgOd4Du3hJkrQwX6qUUOC1JQZB3CI3u1jLNq73WyiiHJOkaQEFIhoZaQS5JHC
wP5Vfa6EGOPyIWSBh3u4nVfMsay+bQHez3ZUlaZpqDhPkExUSUFEJiAhAoGBALje
zBnoWw44nltGk5w6gSeNzJxv20rVaPIv1Re/K0s/MF+wItOo3/Rp9I8mnITz99ia
ZM2QtP8+p0oaqO9HBj51ghB7cB0mBXGeVH63XJ4wYutTfVRlStOI1C2g6fvB5Ltv
UwFvn6po/fgBW2XEbdw1yWMg9wFMYWBl9NB0G32PAoGBAI6LTUMOsPn+teG7IzbK
uJWBRVU/gVgmPSMVGZlwxDbezirBhR4+aq0EXGUwiiMJqe2+fAFVJBaO5RCp2SR6
SzB+f8w0PeskpDkBBk7W47EpGwHLVj2Hqt0DXX8f3MNsMCPmla7H5ff9jYr+1fDO
/xdyTwv6R/51xbwENdEJrs/i
-----END PRIVATE KEY-----
";
/// Published as `rsa-2` only after the rotation.
const RSA_C: &str = "\
-----BEGIN PRIVATE KEY-----
MIIEvAIBADANBgkqhkiG9w0BAQEFAASCBKYwggSiAgEAAoIBAQCQz2OPQ79TYBzJ
1QYDW4dAR1iivETKqoDT/P88zLDtjkjmkU9wE9+hA74z4qnHWfJX6i1sNnHRWX+r
BD2X5Ru2w/yBWWbLrkZkbdw/J2YugshJVsvTVxPU9fU/+Jmv6jXItv18BDxtmBX0
A27Fftn0V+WYX/8fyQAsUnz5x62Y1pM3F3NmaR/Ulx5tiyk9EBJvOk73xZbU3HpZ
eQvVMKolRt9k+IbJJoi38k3p1JaCi2dsr3aIvYs0ZjikE5xUIjNt2vXs7ltAqrNh
hwgnbxqi5Jx4cO8upKqPJN+FpyBAJ1QmgTYWDnOuUW6VxgFGvCR6yGrI/hZGIQkJ
kQwtGAPnAgMBAAECggEAEW3kvcmZrZ9T17ccEitiDAqKUIv4e6wp9VnuHpNEeFM3
0wiKVyMNN4QL0JLnfGcHFC3LacrjyB7NjvfjsfSRcV4FdkwcY0eGkW/nonJLii2T
jcA0qCtC587yxdBWLyYxcwcTW2nnHAnCGqyPGJY8BXzO1Zg4TMsUikEjaazu6AY9
Nm/+qUAudqFq+7tiKuPNhluKkpSpInqeyv4R9hP1vDXkWmkR/ApywUV8jm+caWVs
UsyL5xjMy1s22rxkNiFw+PsPvYMVtb/7RHV0FGdlyQwh00T93dqMZ+QRUjSrOHkR
VKdAismcnEPFtEmgC1tRrNAxUA8KGAgrNwDULVCEgQKBgQDEPseMFg4OK7tqLxEA
HdHX8aIDy9r5Jdm0hvkpzPpQD9g6J7k9EEAT5Xh60jlquLByiHRp2g8ZE0uB9b9B
JEJkwu0/RkVVGCIVvSjSADGYACMLbhr30Fx0mj2szWP+EQrTJQYcSGOSuAyVaDNR
wB3Wu9Zk2RXQp8EpHwG3h26HxQKBgQC850RQbPQA0mdV1FbrIBZ9qnolU2fmJlIu
A2mnOE/ult9PB9iW7XZVSR8F2nTpjIWcWUw6QoVMFnWDmXQQ2X30PHPr24i5ifi+
uzFG+CItdglkZxBY5g7CFJAuXK0l6WPYUSt74RH5LUyS0KU9H/QUXL4oM2ak706i
JmeA2GXruwKBgCjEGdPB6R2MfBwsts1dZHAFY/CB8nT7JeRYfX3vdLgY8oPyKIrE
y2rWqlZpQUAoKY9BRV2PzL8awP64PAieLaSc0YfpYxGwN7RoXQhyvdqjfKQtNTDx
eaNHPzScXf8zLxp5gHFzoCukTAjlYnPDAu/OiVTdu6hikL+oD0U+vvk5AoGAbkEh
KzvcUpp7e6n6rTNGTURyFFURAFB/iKGvSc1hQeVHIw52SOkCNxb9h2IQ+LtuxGmO
RzbKLDWzkwK+rpLyo9mg4xl4PKqdx1zkjwKGmDgblUFeVjS4imiMGrM20DjfcMM3
eQ9NeT0KQ2qJ9xouULAswLP3he6y24tEv/wNyL8CgYAjz2OwPfMKl2g4LygaHH5u
rzOMCjO1RVD1LhYKCNM2gMqSTodLG/UGIZly0gByiZAJcAK7ZUs9y/hoZ6SuYd1a
3N8Ce46Z9F4LraBSpR54xGX9xIkyUz1S+CqsKGQEhcE4uM9cHgD6d1GlJHzc688t
XzdGF8xYzOT6riEjMcQ79g==
-----END PRIVATE KEY-----
";
const RSA_C_N: &str = "kM9jj0O_U2AcydUGA1uHQEdYorxEyqqA0_z_PMyw7Y5I5pFPcBPfoQO-M-Kpx1nyV-otbDZx0Vl_qwQ9l-UbtsP8gVlmy65GZG3cPydmLoLISVbL01cT1PX1P_iZr-o1yLb9fAQ8bZgV9ANuxX7Z9FflmF__H8kALFJ8-cetmNaTNxdzZmkf1JcebYspPRASbzpO98WW1Nx6WXkL1TCqJUbfZPiGySaIt_JN6dSWgotnbK92iL2LNGY4pBOcVCIzbdr17O5bQKqzYYcIJ28aouSceHDvLqSqjyTfhacgQCdUJoE2Fg5zrlFulcYBRrwkeshqyP4WRiEJCZEMLRgD5w";
/// Published as `ec-1` (P-256).
const EC: &str = "\
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQgsmCSIkoP6BNitAOZ
LA8z79kDvP+kDyi1hvlvESAX6dehRANCAASpjR2pcqaAGoGWg5cly4ps1T9UHUl4
cx3hBJ8U6asOalGFr5zzHzc/TeRDK7F/L3Lup20c2kvf9kHfFOw2nb5k
-----END PRIVATE KEY-----
";
const EC_X: &str = "qY0dqXKmgBqBloOXJcuKbNU_VB1JeHMd4QSfFOmrDmo";
const EC_Y: &str = "UYWvnPMfNz9N5EMrsX8vcu6nbRzaS9_2Qd8U7DadvmQ";

fn rsa_jwk(kid: &str, n: &str) -> Value {
    json!({ "kty": "RSA", "use": "sig", "alg": "RS256", "kid": kid, "n": n, "e": "AQAB" })
}

fn ec_jwk(kid: &str) -> Value {
    json!({ "kty": "EC", "use": "sig", "crv": "P-256", "kid": kid, "x": EC_X, "y": EC_Y })
}

/// A JWKS endpoint whose key set and answer delay the test can replace;
/// counts fetches.
struct JwksServer {
    url: String,
    keys: Arc<Mutex<Value>>,
    hits: Arc<AtomicUsize>,
    delay_ms: Arc<AtomicU64>,
}

type JwksState = (Arc<Mutex<Value>>, Arc<AtomicUsize>, Arc<AtomicU64>);

async fn serve_jwks(State((keys, hits, delay_ms)): State<JwksState>) -> Json<Value> {
    hits.fetch_add(1, Ordering::SeqCst);
    let keys = keys.lock().unwrap().clone();
    tokio::time::sleep(Duration::from_millis(delay_ms.load(Ordering::SeqCst))).await;
    Json(keys)
}

impl JwksServer {
    async fn start(keys: Value) -> JwksServer {
        let keys = Arc::new(Mutex::new(keys));
        let hits = Arc::new(AtomicUsize::new(0));
        let delay_ms = Arc::new(AtomicU64::new(0));
        let app = Router::new()
            .route(
                "/realms/test/protocol/openid-connect/certs",
                get(serve_jwks),
            )
            .with_state((keys.clone(), hits.clone(), delay_ms.clone()));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        JwksServer {
            url: format!("http://{addr}/realms/test/protocol/openid-connect/certs"),
            keys,
            hits,
            delay_ms,
        }
    }

    fn set_keys(&self, keys: Value) {
        *self.keys.lock().unwrap() = keys;
    }

    /// Every later fetch is answered only after `delay`.
    fn set_delay(&self, delay: Duration) {
        self.delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    fn hits(&self) -> usize {
        self.hits.load(Ordering::SeqCst)
    }
}

fn claims(node: &TestNode, roles: &[&str]) -> Value {
    let now = jsonwebtoken::get_current_timestamp();
    json!({
        "sub": "jwks-client",
        "iss": node.config.auth.issuer,
        "aud": node.config.auth.audience,
        "iat": now,
        "exp": now + 300,
        "roles": roles,
    })
}

fn sign(alg: Algorithm, kid: &str, key: &EncodingKey, claims: &Value) -> String {
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_string());
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

fn rs256(pem: &str, kid: &str, claims: &Value) -> String {
    sign(
        Algorithm::RS256,
        kid,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap(),
        claims,
    )
}

fn es256(kid: &str, claims: &Value) -> String {
    sign(
        Algorithm::ES256,
        kid,
        &EncodingKey::from_ec_pem(EC.as_bytes()).unwrap(),
        claims,
    )
}

/// The DER (SubjectPublicKeyInfo) inside a PEM public key.
fn pem_body(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    STANDARD.decode(body).unwrap()
}

/// Status and content type of a POST /api/v1/payments with `token`.
async fn post(node: &TestNode, token: &str) -> (u16, String) {
    let key = uuid::Uuid::new_v4().to_string();
    let response = node
        .http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(token)
        .header("Idempotency-Key", &key)
        .json(&payment_body(&format!("o-{key}"), &[("s-1", 500)]))
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (status, content_type)
}

/// The body of a POST /api/v1/payments with `token`.
async fn post_body(node: &TestNode, token: &str) -> String {
    let key = uuid::Uuid::new_v4().to_string();
    node.http
        .post(format!("{}/api/v1/payments", node.base))
        .bearer_auth(token)
        .header("Idempotency-Key", &key)
        .json(&payment_body(&format!("o-{key}"), &[("s-1", 500)]))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}

#[track_caller]
fn assert_problem((status, content_type): (u16, String), expected: u16, what: &str) {
    assert_eq!(status, expected, "{what}");
    assert_eq!(content_type, "application/problem+json", "{what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_tokens_are_verified_by_their_key() {
    let jwks =
        JwksServer::start(json!({ "keys": [rsa_jwk("rsa-1", RSA_A_N), ec_jwk("ec-1")] })).await;
    let mut config = test_config().await;
    config.auth.jwks_url = Some(jwks.url.clone());
    config.auth.jwks_min_refresh_secs = 2;
    let node = TestNode::start(config).await;
    let write = &["payment:write"][..];

    // Valid RS256 and ES256 tokens.
    assert_eq!(
        post(&node, &rs256(RSA_A, "rsa-1", &claims(&node, write)))
            .await
            .0,
        202
    );
    assert_eq!(
        post(&node, &es256("ec-1", &claims(&node, write))).await.0,
        202
    );

    // Keycloak-style: roles under realm_access, audience as an array.
    let now = jsonwebtoken::get_current_timestamp();
    let keycloak = json!({
        "sub": "f3b1c0de-0000-4000-8000-000000000001",
        "iss": node.config.auth.issuer,
        "aud": ["account", node.config.auth.audience],
        "azp": "paynode-client",
        "typ": "Bearer",
        "iat": now,
        "exp": now + 300,
        "realm_access": { "roles": ["offline_access", "payment:write"] },
        "resource_access": { "account": { "roles": ["view-profile"] } },
        "preferred_username": "merchant",
    });
    assert_eq!(post(&node, &rs256(RSA_A, "rsa-1", &keycloak)).await.0, 202);

    // Expired beyond the leeway.
    let mut expired = claims(&node, write);
    expired["iat"] = json!(now - 1200);
    expired["exp"] = json!(now - 600);
    assert_problem(
        post(&node, &rs256(RSA_A, "rsa-1", &expired)).await,
        401,
        "expired",
    );

    // Not yet valid beyond the leeway.
    let mut early = claims(&node, write);
    early["nbf"] = json!(now + 600);
    assert_problem(
        post(&node, &es256("ec-1", &early)).await,
        401,
        "nbf in the future",
    );

    let mut wrong_issuer = claims(&node, write);
    wrong_issuer["iss"] = json!("https://idp.example/realms/other");
    assert_problem(
        post(&node, &rs256(RSA_A, "rsa-1", &wrong_issuer)).await,
        401,
        "issuer",
    );

    let mut wrong_audience = claims(&node, write);
    wrong_audience["aud"] = json!("someone-else");
    assert_problem(
        post(&node, &es256("ec-1", &wrong_audience)).await,
        401,
        "audience",
    );

    let mut no_audience = claims(&node, write);
    no_audience.as_object_mut().unwrap().remove("aud");
    assert_problem(
        post(&node, &rs256(RSA_A, "rsa-1", &no_audience)).await,
        401,
        "no audience",
    );

    // Signed by another RSA key under the published kid.
    let forged = rs256(RSA_B, "rsa-1", &claims(&node, write));
    assert_problem(post(&node, &forged).await, 401, "foreign signature");

    // A valid RSA signature presented under the EC key's kid: the key
    // decides the algorithm, the header cannot.
    let mismatched = rs256(RSA_A, "ec-1", &claims(&node, write));
    assert_problem(post(&node, &mismatched).await, 401, "alg/key mismatch");

    // alg: none, with and without a signature part.
    let payload = URL_SAFE_NO_PAD.encode(claims(&node, write).to_string());
    for alg in ["none", "None", "NONE"] {
        let header =
            URL_SAFE_NO_PAD.encode(json!({ "alg": alg, "typ": "JWT", "kid": "rsa-1" }).to_string());
        assert_problem(
            post(&node, &format!("{header}.{payload}.")).await,
            401,
            "alg none",
        );
        assert_problem(
            post(&node, &format!("{header}.{payload}")).await,
            401,
            "alg none, 2 parts",
        );
    }

    // Key confusion: HS256 "signed" with the RSA public key's bytes (PEM,
    // DER, raw modulus) under the RSA kid.
    let n_bytes = URL_SAFE_NO_PAD.decode(RSA_A_N).unwrap();
    for secret in [
        RSA_A_PUBLIC.as_bytes().to_vec(),
        pem_body(RSA_A_PUBLIC),
        n_bytes,
    ] {
        let token = sign(
            Algorithm::HS256,
            "rsa-1",
            &EncodingKey::from_secret(&secret),
            &claims(&node, write),
        );
        assert_problem(
            post(&node, &token).await,
            401,
            "HS256 with the RSA public key",
        );
    }

    // Unknown kids are refused, and a burst of them does not hammer the
    // identity provider (at most one fetch per jwks_min_refresh_secs).
    let rotated = rs256(RSA_C, "rsa-2", &claims(&node, write));
    let before = jwks.hits();
    for _ in 0..5 {
        assert_problem(post(&node, &rotated).await, 401, "unknown kid");
    }
    assert!(
        jwks.hits() - before <= 1,
        "JWKS fetched {} times for a burst of unknown kids",
        jwks.hits() - before
    );

    // A 401 echoes neither the attacker's kid nor the library's reason.
    let planted = "kid-planted-<b>by-the-caller";
    let body = post_body(&node, &rs256(RSA_A, planted, &claims(&node, write))).await;
    assert!(!body.contains("planted"), "kid echoed: {body}");
    let body = post_body(&node, &forged).await;
    assert!(!body.contains("InvalidSignature"), "reason echoed: {body}");

    // Rotation: the IdP publishes rsa-2; the next token naming it makes the
    // node refresh its keys (once the rate limit allows).
    jwks.set_keys(
        json!({ "keys": [rsa_jwk("rsa-1", RSA_A_N), rsa_jwk("rsa-2", RSA_C_N), ec_jwk("ec-1")] }),
    );
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    // The first token naming rsa-2 starts a background refresh (it is
    // refused if the refresh has not landed yet); soon after it is accepted.
    wait_accepted(&node, &rotated, "rotated key after refresh").await;

    // Roles.
    let finance = rs256(RSA_A, "rsa-1", &claims(&node, &["FINANCE"]));
    assert_problem(post(&node, &finance).await, 403, "wrong role");
    let response = node
        .http
        .get(format!("{}/api/v1/admin/plugins", node.base))
        .bearer_auth(es256("ec-1", &claims(&node, write)))
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status().as_u16(),
        403,
        "admin route with payment:write"
    );
    assert_eq!(
        response.headers()["content-type"],
        "application/problem+json"
    );

    // With a JWKS and no explicit auth.allow_hs256, HS256 is off: the
    // (dev) shared secret mints nothing the node accepts.
    assert_problem(
        post(&node, &node.token(write)).await,
        401,
        "HS256 beside a JWKS without allow_hs256",
    );

    assert_eq!(node.scalar("SELECT count(*) FROM payments").await, 4);
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hs256_beside_jwks_needs_its_own_issuer() {
    let jwks = JwksServer::start(json!({ "keys": [rsa_jwk("rsa-1", RSA_A_N)] })).await;
    let mut config = test_config().await;
    config.auth.jwks_url = Some(jwks.url.clone());
    config.auth.allow_hs256 = Some(true);
    config.auth.hs256_issuer = Some("paynode-local".into());
    let node = TestNode::start(config).await;
    let write = &["payment:write"][..];
    // Minted by `paynode token`: the HS256 issuer.
    assert_eq!(post(&node, &node.token(write)).await.0, 202);
    // HS256 under the identity provider's issuer: refused.
    let secret = node.config.auth.hs256_key().unwrap().as_bytes().to_vec();
    let posing = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims(&node, write),
        &EncodingKey::from_secret(&secret),
    )
    .unwrap();
    assert_problem(
        post(&node, &posing).await,
        401,
        "HS256 with the IdP's issuer",
    );
    assert_eq!(
        post(&node, &rs256(RSA_A, "rsa-1", &claims(&node, write)))
            .await
            .0,
        202
    );
    node.stop().await;
}

/// Polls POSTs with `token` until one is accepted, or panics naming `what`.
async fn wait_accepted(node: &TestNode, token: &str, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while post(node, token).await.0 != 202 {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A token naming a kid the node has not cached is refused at once: the
/// refresh it triggers runs in the background (rate-limited), so a slow or
/// hung identity provider never holds requests, and known keys keep working
/// while it runs. Once the refresh lands the new key is accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_kid_never_waits_for_a_fetch() {
    let jwks = JwksServer::start(json!({ "keys": [rsa_jwk("rsa-1", RSA_A_N)] })).await;
    let mut config = test_config().await;
    config.auth.jwks_url = Some(jwks.url.clone());
    config.auth.jwks_min_refresh_secs = 1;
    let node = TestNode::start(config).await;
    let write = &["payment:write"][..];
    let known = rs256(RSA_A, "rsa-1", &claims(&node, write));
    wait_accepted(&node, &known, "the first key set").await;

    // The identity provider rotates and becomes slow to answer.
    jwks.set_keys(json!({ "keys": [rsa_jwk("rsa-1", RSA_A_N), rsa_jwk("rsa-2", RSA_C_N)] }));
    jwks.set_delay(Duration::from_secs(3));
    tokio::time::sleep(Duration::from_millis(1_100)).await; // past the rate limit
    let rotated = rs256(RSA_C, "rsa-2", &claims(&node, write));
    let started = Instant::now();
    let status = post(&node, &rotated).await.0;
    let waited = started.elapsed();
    assert_eq!(
        status, 401,
        "a kid not cached yet is refused, not waited for"
    );
    assert!(
        waited < Duration::from_millis(1_500),
        "a request with an unknown kid waited {waited:?} for the JWKS fetch"
    );
    let started = Instant::now();
    assert_eq!(
        post(&node, &known).await.0,
        202,
        "known key during the fetch"
    );
    assert!(
        started.elapsed() < Duration::from_millis(1_500),
        "a known key waited {:?} during the fetch",
        started.elapsed()
    );
    // The background refresh lands (after the 3 s answer) and brings rsa-2.
    wait_accepted(&node, &rotated, "rsa-2 after the background refresh").await;
    node.stop().await;
}

/// A JWKS endpoint that never ends its body (chunked, no length), counting
/// the bytes it managed to hand over.
async fn endless_jwks() -> (String, Arc<AtomicUsize>) {
    use axum::body::{Body, Bytes};
    let sent = Arc::new(AtomicUsize::new(0));
    let counter = sent.clone();
    let app = Router::new().route(
        "/certs",
        get(move || {
            let counter = counter.clone();
            async move {
                let head = futures::stream::once(async {
                    Ok::<_, std::io::Error>(Bytes::from_static(b"{\"keys\":["))
                });
                let padding = futures::stream::unfold(counter, |counter| async move {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    let chunk = Bytes::from(vec![b' '; 64 * 1024]);
                    counter.fetch_add(chunk.len(), Ordering::SeqCst);
                    Some((Ok(chunk), counter))
                });
                Body::from_stream(futures::StreamExt::chain(head, padding))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (format!("http://{addr}/certs"), sent)
}

/// The JWKS body is bounded while it is read: an endless (or huge) answer
/// is cut off past the cap instead of being buffered until the timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jwks_body_is_capped_while_reading() {
    let (url, sent) = endless_jwks().await;
    let mut config = test_config().await;
    config.auth.jwks_url = Some(url);
    let node = TestNode::start(config).await;
    let token = rs256(RSA_A, "rsa-1", &claims(&node, &["payment:write"]));
    assert_problem(post(&node, &token).await, 401, "no usable key set");
    // Whatever fetch ran has had time to read far past any cap by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let read = sent.load(Ordering::SeqCst);
    assert!(
        read < 1024 * 1024,
        "the node read {read} bytes of an endless JWKS body"
    );
    node.stop().await;
}

/// `exp - iat` is capped (`auth.max_token_lifetime_secs`); a token without
/// `iat` cannot show its lifetime and is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_lifetime_is_capped() {
    let mut config = test_config().await;
    config.auth.max_token_lifetime_secs = 7_200;
    let node = TestNode::start(config).await;
    let secret = node.config.auth.hs256_key().unwrap().as_bytes().to_vec();
    let hs256 = |claims: &Value| {
        jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            claims,
            &EncodingKey::from_secret(&secret),
        )
        .unwrap()
    };
    let now = jsonwebtoken::get_current_timestamp();
    let mut lifetime = claims(&node, &["payment:write"]);
    lifetime["exp"] = json!(now + 3_600);
    assert_eq!(post(&node, &hs256(&lifetime)).await.0, 202, "1 h token");
    lifetime["exp"] = json!(now + 3 * 3_600);
    assert_problem(
        post(&node, &hs256(&lifetime)).await,
        401,
        "3 h token, cap 2 h",
    );
    lifetime["exp"] = json!(now + 30 * 24 * 3_600);
    assert_problem(post(&node, &hs256(&lifetime)).await, 401, "30 day token");
    lifetime["exp"] = json!(now + 300);
    lifetime.as_object_mut().unwrap().remove("iat");
    assert_problem(
        post(&node, &hs256(&lifetime)).await,
        401,
        "token without iat",
    );
    node.stop().await;
}
