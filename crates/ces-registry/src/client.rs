//! The distribution API client: authentication (Basic, and the Bearer token
//! flow GHCR and Docker Hub use), manifests with a size limit, and blobs
//! streamed into the store.

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use ces_image::store::BlobWriter;
use ces_image::{Digest, ImageReference};
use futures_util::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, WWW_AUTHENTICATE};

use crate::auth::{Challenge, Credentials};
use crate::error::RegistryError;

/// Where ces may pull from, and how.
#[derive(Debug, Clone, Default)]
pub struct ClientConfig {
    /// Registries that may be pulled from (`host[:port]`). Anything else is
    /// refused before a single packet is sent.
    pub allowed: Vec<String>,
    /// Of those, the ones reached over plain HTTP.
    pub insecure: Vec<String>,
}

/// A registry client bound to an allowlist.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    config: ClientConfig,
}

impl Client {
    /// A client with ces's timeouts and user agent.
    pub fn new(config: ClientConfig) -> Result<Client, RegistryError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("ces/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(15))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(RegistryError::Client)?;
        Ok(Client { http, config })
    }

    /// Checks the allowlist; the only way to a [`Session`].
    pub fn check_allowed(&self, registry: &str) -> Result<(), RegistryError> {
        if self.config.allowed.iter().any(|a| a == registry) {
            Ok(())
        } else {
            Err(RegistryError::NotAllowed { registry: registry.to_owned(), allowed: self.config.allowed.clone() })
        }
    }

    /// Opens an authenticated session for pulling `reference`'s repository.
    /// Credentials are checked here, so a wrong token is reported as such
    /// rather than as a missing image.
    pub async fn session(
        &self,
        reference: &ImageReference,
        credentials: &Credentials,
    ) -> Result<Session, RegistryError> {
        self.check_allowed(reference.registry())?;
        let registry = reference.registry().to_owned();
        let scheme = if self.config.insecure.contains(&registry) { "http" } else { "https" };
        // Docker Hub's API lives on another host than its name.
        let host = if registry == "docker.io" { "registry-1.docker.io" } else { registry.as_str() };
        let session = Session {
            http: self.http.clone(),
            base: format!("{scheme}://{host}/v2/"),
            registry,
            repository: reference.repository().to_owned(),
            credentials: credentials.clone(),
            authorization: Mutex::new(None),
        };
        session.authenticate().await?;
        Ok(session)
    }
}

/// An authenticated conversation with one repository of one registry.
#[derive(Debug)]
pub struct Session {
    http: reqwest::Client,
    base: String,
    registry: String,
    repository: String,
    credentials: Credentials,
    authorization: Mutex<Option<String>>,
}

/// A manifest as fetched.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    /// The exact bytes (their digest is the manifest's identity).
    pub bytes: Vec<u8>,
    /// The `Content-Type` the registry sent.
    pub content_type: Option<String>,
    /// sha256 of `bytes`.
    pub digest: Digest,
}

impl Session {
    /// The registry this session talks to.
    pub fn registry(&self) -> &str {
        &self.registry
    }

    fn unreachable(&self) -> impl FnOnce(reqwest::Error) -> RegistryError + '_ {
        move |source| RegistryError::Unreachable { registry: self.registry.clone(), source }
    }

    fn unauthorized(&self) -> RegistryError {
        RegistryError::Unauthorized {
            registry: self.registry.clone(),
            repository: self.repository.clone(),
            anonymous: self.credentials == Credentials::Anonymous,
        }
    }

    fn bad_credentials(&self) -> RegistryError {
        RegistryError::BadCredentials {
            registry: self.registry.clone(),
            user: self.credentials.user().unwrap_or_default().to_owned(),
        }
    }

    fn set_authorization(&self, value: Option<String>) {
        *self.authorization.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = value;
    }

    fn authorization(&self) -> Option<String> {
        self.authorization.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).clone()
    }

    /// Probes `/v2/` and answers its challenge: Basic credentials, or a
    /// Bearer token for `repository:<repo>:pull` from the token service.
    async fn authenticate(&self) -> Result<(), RegistryError> {
        let response = self.http.get(&self.base).send().await.map_err(self.unreachable())?;
        if response.status() != StatusCode::UNAUTHORIZED {
            // Open registry (or an odd one): proceed, requests will tell.
            return Ok(());
        }
        let challenge = challenge_of(response.headers()).ok_or(RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "401 without a usable WWW-Authenticate challenge",
        })?;
        self.answer(&challenge).await
    }

    async fn answer(&self, challenge: &Challenge) -> Result<(), RegistryError> {
        match challenge {
            Challenge::Basic => {
                let Some(basic) = self.credentials.basic_header() else {
                    return Err(self.unauthorized());
                };
                let response =
                    self.http.get(&self.base).header(AUTHORIZATION, &basic).send().await.map_err(self.unreachable())?;
                if response.status() == StatusCode::UNAUTHORIZED {
                    return Err(self.bad_credentials());
                }
                self.set_authorization(Some(basic));
                Ok(())
            }
            Challenge::Bearer { realm, service, .. } => {
                let token = self.fetch_token(realm, service.as_deref()).await?;
                self.set_authorization(Some(format!("Bearer {token}")));
                Ok(())
            }
        }
    }

    async fn fetch_token(&self, realm: &str, service: Option<&str>) -> Result<String, RegistryError> {
        let scope = format!("repository:{}:pull", self.repository);
        let mut query = vec![("scope", scope.as_str())];
        if let Some(service) = service {
            query.push(("service", service));
        }
        let mut request = self.http.get(realm).query(&query);
        if let Some(basic) = self.credentials.basic_header() {
            request = request.header(AUTHORIZATION, basic);
        }
        let response = request.send().await.map_err(self.unreachable())?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN if self.credentials != Credentials::Anonymous => {
                return Err(self.bad_credentials());
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.unauthorized()),
            status => {
                return Err(RegistryError::Status {
                    registry: self.registry.clone(),
                    what: format!("token request for {scope}"),
                    status,
                });
            }
        }
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let bytes = read_limited(response, 1 << 20)
            .await
            .map_err(|source| RegistryError::Transfer {
                registry: self.registry.clone(),
                what: "token".into(),
                source,
            })?
            .ok_or(RegistryError::BadAuth { registry: self.registry.clone(), detail: "token answer too large" })?;
        let parsed: TokenResponse = serde_json::from_slice(&bytes).map_err(|_| RegistryError::BadAuth {
            registry: self.registry.clone(),
            detail: "token answer is not JSON",
        })?;
        parsed
            .token
            .or(parsed.access_token)
            .filter(|t| !t.is_empty())
            .ok_or(RegistryError::BadAuth { registry: self.registry.clone(), detail: "token answer has no token" })
    }

    /// Sends a GET, re-authenticating once if the registry asks again (an
    /// expired token, or a scope it wants spelled differently).
    async fn get(&self, url: &str, accept: Option<&str>) -> Result<reqwest::Response, RegistryError> {
        for attempt in 0..2 {
            let mut request = self.http.get(url);
            if let Some(accept) = accept {
                request = request.header(ACCEPT, accept);
            }
            if let Some(auth) = self.authorization() {
                request = request.header(AUTHORIZATION, auth);
            }
            let response = request.send().await.map_err(self.unreachable())?;
            if response.status() == StatusCode::UNAUTHORIZED && attempt == 0 {
                match challenge_of(response.headers()) {
                    Some(challenge) => {
                        self.answer(&challenge).await?;
                        continue;
                    }
                    None => return Err(self.unauthorized()),
                }
            }
            return Ok(response);
        }
        Err(self.unauthorized())
    }

    /// Fetches a manifest by tag or digest, reading at most `limit` bytes.
    /// Fetched by digest, the bytes must hash to it.
    pub async fn manifest(&self, reference: &str, limit: u64) -> Result<FetchedManifest, RegistryError> {
        let url = format!("{}{}/manifests/{}", self.base, self.repository, reference);
        let shown = format!(
            "{}/{}{}{}",
            self.registry,
            self.repository,
            if reference.contains(':') { "@" } else { ":" },
            reference
        );
        let response = self.get(&url, Some(ces_image::manifest::ACCEPT)).await?;
        match response.status() {
            s if s.is_success() => {}
            StatusCode::NOT_FOUND => return Err(RegistryError::NotFound { reference: shown }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => return Err(self.unauthorized()),
            status => {
                return Err(RegistryError::Status {
                    registry: self.registry.clone(),
                    what: format!("GET manifest {shown}"),
                    status,
                });
            }
        }
        let content_type = response.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_owned);
        let bytes = read_limited(response, limit)
            .await
            .map_err(|source| RegistryError::Transfer {
                registry: self.registry.clone(),
                what: format!("manifest {shown}"),
                source,
            })?
            .ok_or(RegistryError::TooLarge { what: "manifest", reference: shown.clone(), limit })?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = reference.parse::<Digest>().ok().filter(|expected| *expected != digest) {
            return Err(RegistryError::ManifestDigestMismatch { reference: shown, expected, actual: digest });
        }
        Ok(FetchedManifest { bytes, content_type, digest })
    }

    /// Streams blob `digest` into `writer`, calling `progress` with each
    /// chunk's length. The writer checks size and digest when committed.
    pub async fn blob(
        &self,
        digest: &Digest,
        size: u64,
        mut writer: BlobWriter,
        progress: &(dyn Fn(u64) + Send + Sync),
    ) -> Result<(), RegistryError> {
        let response = self.get_blob(digest).await?;
        if let Some(length) = response.content_length().filter(|l| *l != size) {
            return Err(
                ces_image::StoreError::SizeMismatch { digest: digest.clone(), expected: size, actual: length }.into()
            );
        }
        let mut stream = response.bytes_stream();
        while let Some(chunk) = stream.next().await {
            let chunk = chunk.map_err(|source| RegistryError::Transfer {
                registry: self.registry.clone(),
                what: digest.to_string(),
                source,
            })?;
            if let Err(e) = writer.write_all(&chunk) {
                return Err(writer.write_error(e).into());
            }
            progress(chunk.len() as u64);
        }
        writer.commit()?;
        Ok(())
    }

    /// Fetches a small blob (a config) into memory, at most `limit` bytes.
    /// The bytes must be `size` long and hash to `digest` (as a streamed
    /// blob must be when committed), so that no caller reads a blob the
    /// registry altered.
    pub async fn small_blob(&self, digest: &Digest, size: u64, limit: u64) -> Result<Vec<u8>, RegistryError> {
        let response = self.get_blob(digest).await?;
        let bytes = read_limited(response, limit)
            .await
            .map_err(|source| RegistryError::Transfer {
                registry: self.registry.clone(),
                what: digest.to_string(),
                source,
            })?
            .ok_or(RegistryError::TooLarge { what: "config", reference: digest.to_string(), limit })?;
        if bytes.len() as u64 != size {
            let actual = bytes.len() as u64;
            return Err(ces_image::StoreError::SizeMismatch { digest: digest.clone(), expected: size, actual }.into());
        }
        let actual = Digest::of(&bytes);
        if actual != *digest {
            return Err(ces_image::StoreError::DigestMismatch { expected: digest.clone(), actual }.into());
        }
        Ok(bytes)
    }

    /// Sends `GET` for blob `digest`; any answer but a success is an error
    /// naming the blob.
    async fn get_blob(&self, digest: &Digest) -> Result<reqwest::Response, RegistryError> {
        let url = format!("{}{}/blobs/{}", self.base, self.repository, digest);
        let response = self.get(&url, None).await?;
        match response.status() {
            s if s.is_success() => Ok(response),
            StatusCode::NOT_FOUND => Err(RegistryError::NotFound {
                reference: format!("{}/{}@{digest} (blob)", self.registry, self.repository),
            }),
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.unauthorized()),
            status => Err(RegistryError::Status {
                registry: self.registry.clone(),
                what: format!("GET blob {digest}"),
                status,
            }),
        }
    }
}

fn challenge_of(headers: &HeaderMap) -> Option<Challenge> {
    headers.get_all(WWW_AUTHENTICATE).iter().filter_map(|v| v.to_str().ok()).find_map(Challenge::parse)
}

/// Reads a body of at most `limit` bytes; `None` if it is longer.
async fn read_limited(response: reqwest::Response, limit: u64) -> Result<Option<Vec<u8>>, reqwest::Error> {
    if response.content_length().is_some_and(|l| l > limit) {
        return Ok(None);
    }
    let mut out = Vec::new();
    let mut stream = response.bytes_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        if out.len() as u64 + chunk.len() as u64 > limit {
            return Ok(None);
        }
        out.extend_from_slice(&chunk);
    }
    Ok(Some(out))
}
