//! The ACME account and one order: TLS-ALPN-01 authorization, finalization, download.

use super::*;

impl Acme {
    /// The account, loaded from the state directory or registered on first use.
    pub(super) async fn account(&self) -> Result<Account> {
        let mut cached = self.account.lock().await;
        if let Some(account) = &*cached {
            return Ok(account.clone());
        }
        let directory = &self.config.directory;
        let builder = || Account::builder_with_http(Box::new(self.http.clone()));
        let path = self.dir.as_ref().map(|d| d.join("account.json"));
        let shared = match &self.cluster {
            Some(c) => c.stored_account(&directory_id(directory)).await?,
            None => None,
        };
        let stored = match &path {
            _ if shared.is_some() => shared
                .as_deref()
                .and_then(|text| serde_json::from_str::<AccountCredentials>(text).ok()),
            Some(p) if p.exists() => {
                let text = std::fs::read_to_string(p)
                    .map_err(|e| Error::io(format!("reading {}", p.display()), e))?;
                let creds: AccountCredentials = serde_json::from_str(&text).map_err(|e| {
                    Error::new(
                        ErrorCode::Config,
                        format!(
                            "{} is not a valid ACME account ({e}); delete it to register a new account",
                            p.display()
                        ),
                    )
                })?;
                Some(creds)
            }
            _ => None,
        };
        let account = match stored {
            Some(creds) => builder()
                .from_credentials(creds)
                .await
                .map_err(|e| classify(e, directory, "loading the ACME account"))?,
            None => {
                let contact =
                    self.config
                        .contact
                        .as_ref()
                        .map(|c| match c.strip_prefix("mailto:") {
                            Some(_) => c.clone(),
                            None => format!("mailto:{c}"),
                        });
                let contacts: Vec<&str> = contact.iter().map(String::as_str).collect();
                let (account, creds) = builder()
                    .create(
                        &NewAccount {
                            contact: &contacts,
                            terms_of_service_agreed: true,
                            only_return_existing: false,
                        },
                        directory.clone(),
                        None,
                    )
                    .await
                    .map_err(|e| classify(e, directory, "registering an ACME account"))?;
                let json = serde_json::to_string(&creds)
                    .map_err(|e| Error::new(ErrorCode::Internal, format!("ACME account: {e}")))?;
                if let Some(p) = &path {
                    write_private(p, json.as_bytes())?;
                }
                tracing::info!(%directory, account = %account.id(), "ACME account registered");
                match &self.cluster {
                    // Another edge may have registered first: every edge uses the stored one.
                    Some(c) => {
                        let stored = c.share_account(&directory_id(directory), &json).await?;
                        if stored == json {
                            account
                        } else {
                            let creds: AccountCredentials =
                                serde_json::from_str(&stored).map_err(|e| {
                                    Error::new(
                                        ErrorCode::Config,
                                        format!(
                                            "the shared ACME account in etcd is unreadable: {e}"
                                        ),
                                    )
                                })?;
                            builder().from_credentials(creds).await.map_err(|e| {
                                classify(e, directory, "loading the shared ACME account")
                            })?
                        }
                    }
                    None => account,
                }
            }
        };
        *cached = Some(account.clone());
        Ok(account)
    }

    /// One order for `name`, from new-order to the stored certificate.
    pub(super) async fn order(&self, name: &str) -> Result<Issued> {
        let directory = &self.config.directory;
        let account = self.account().await?;
        self.counters.orders.fetch_add(1, Ordering::Relaxed);
        let identifiers = [Identifier::Dns(name.to_owned())];
        let mut http_tokens = Vec::new();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| classify(e, directory, &format!("ordering a certificate for {name}")))?;
        {
            let mut authorizations = order.authorizations();
            while let Some(authz) = authorizations.next().await {
                let mut authz =
                    authz.map_err(|e| classify(e, directory, "fetching the authorization"))?;
                match authz.status {
                    AuthorizationStatus::Valid => continue,
                    AuthorizationStatus::Pending => {}
                    other => {
                        return Err(Error::new(
                            ErrorCode::AcmeFailed,
                            format!("{directory}: the authorization for {name} is {other:?}"),
                        ))
                    }
                }
                let kind = match self.config.challenge {
                    ChallengeKind::TlsAlpn01 => ChallengeType::TlsAlpn01,
                    ChallengeKind::Http01 => ChallengeType::Http01,
                };
                let mut challenge = authz.challenge(kind.clone()).ok_or_else(|| {
                    Error::new(
                        ErrorCode::AcmeFailed,
                        format!("{directory} offers no {kind:?} challenge for {name}"),
                    )
                })?;
                let key_authorization = challenge.key_authorization();
                match self.config.challenge {
                    ChallengeKind::TlsAlpn01 => {
                        let answer = challenge_cert(name, key_authorization.digest().as_ref())?;
                        lock(&self.challenges).insert(name.to_owned(), answer);
                        if let Some(cluster) = &self.cluster {
                            // A validation may arrive at any edge: they send it here.
                            cluster.announce_challenge(name).await?;
                        }
                    }
                    ChallengeKind::Http01 => {
                        lock(&self.http_tokens).insert(
                            challenge.token.clone(),
                            key_authorization.as_str().to_owned(),
                        );
                        http_tokens.push(challenge.token.clone());
                    }
                }
                challenge
                    .set_ready()
                    .await
                    .map_err(|e| classify(e, directory, "answering the challenge"))?;
            }
        }
        let retry = RetryPolicy::new()
            .initial_delay(Duration::from_millis(100))
            .backoff(1.5)
            .timeout(ORDER_TIMEOUT);
        let ready = order.poll_ready(&retry).await;
        {
            let mut tokens = lock(&self.http_tokens);
            for t in &http_tokens {
                tokens.remove(t);
            }
        }
        match ready {
            Ok(OrderStatus::Ready) => {}
            Ok(_) => return Err(challenge_failure(&mut order, name, directory, None).await),
            Err(instant_acme::Error::Api(p)) => {
                return Err(challenge_failure(&mut order, name, directory, Some(p)).await)
            }
            Err(e) => return Err(classify(e, directory, "waiting for validation")),
        }
        lock(&self.challenges).remove(name);
        let key = KeyPair::generate().map_err(rcgen_err)?;
        let mut params = CertificateParams::new(vec![name.to_owned()]).map_err(rcgen_err)?;
        params.distinguished_name = DistinguishedName::new();
        let csr = params.serialize_request(&key).map_err(rcgen_err)?;
        order
            .finalize_csr(csr.der())
            .await
            .map_err(|e| classify(e, directory, "finalizing the order"))?;
        let chain = order
            .poll_certificate(&retry)
            .await
            .map_err(|e| classify(e, directory, "downloading the certificate"))?;
        let key_pem = key.serialize_pem();
        let cert = CertKey::from_pem(chain.as_bytes(), key_pem.as_bytes())?;
        cert.check_covers(name)?;
        let issued = Issued::new(cert)?;
        self.persist(name, &chain, &key_pem)?;
        if let Some(cluster) = &self.cluster {
            if let Err(e) = cluster.share_cert(name, &chain, &key_pem).await {
                tracing::warn!(%name, error = %e, "certificate not shared with the cluster; other edges order their own");
            }
        }
        Ok(issued)
    }
}
