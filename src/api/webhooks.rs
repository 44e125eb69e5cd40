//! The gRPC face of webhooks; the methods live in `crate::webhooks::{endpoints, deliveries}`.

use super::App;
use crate::pb;
use std::sync::Arc;
use tonic::{Request, Response, Status};

pub struct WebhookGrpc(pub Arc<App>);

#[tonic::async_trait]
impl pb::webhook_service_server::WebhookService for WebhookGrpc {
    async fn create_webhook_endpoint(
        &self,
        r: Request<pb::CreateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        let (meta, _, req) = r.into_parts();
        let run = self.0.create_webhook_endpoint(&p, req.clone());
        Ok(Response::new(
            crate::http::idempotency::grpc(
                &self.0,
                &p,
                &meta,
                "/whatisup.v1.WebhookService/CreateWebhookEndpoint",
                &req,
                run,
            )
            .await?,
        ))
    }

    async fn list_webhook_endpoints(
        &self,
        r: Request<pb::ListWebhookEndpointsRequest>,
    ) -> Result<Response<pb::ListWebhookEndpointsResponse>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(self.0.list_webhook_endpoints(&p).await?))
    }

    async fn get_webhook_endpoint(
        &self,
        r: Request<pb::GetWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.get_webhook_endpoint(&p, &r.into_inner().id).await?,
        ))
    }

    async fn update_webhook_endpoint(
        &self,
        r: Request<pb::UpdateWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.update_webhook_endpoint(&p, r.into_inner()).await?,
        ))
    }

    async fn delete_webhook_endpoint(
        &self,
        r: Request<pb::DeleteWebhookEndpointRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0
                .delete_webhook_endpoint(&p, &r.into_inner().id)
                .await?,
        ))
    }

    async fn rotate_webhook_secret(
        &self,
        r: Request<pb::RotateWebhookSecretRequest>,
    ) -> Result<Response<pb::WebhookEndpoint>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.rotate_webhook_secret(&p, &r.into_inner().id).await?,
        ))
    }

    async fn recover_webhook_endpoint(
        &self,
        r: Request<pb::RecoverWebhookEndpointRequest>,
    ) -> Result<Response<pb::RecoverWebhookEndpointResponse>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.recover_webhook_endpoint(&p, r.into_inner()).await?,
        ))
    }

    async fn list_webhook_deliveries(
        &self,
        r: Request<pb::ListWebhookDeliveriesRequest>,
    ) -> Result<Response<pb::ListWebhookDeliveriesResponse>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.list_webhook_deliveries(&p, r.into_inner()).await?,
        ))
    }

    async fn get_webhook_delivery(
        &self,
        r: Request<pb::GetWebhookDeliveryRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.get_webhook_delivery(&p, &r.into_inner().id).await?,
        ))
    }

    async fn redeliver_webhook(
        &self,
        r: Request<pb::RedeliverWebhookRequest>,
    ) -> Result<Response<pb::WebhookDelivery>, Status> {
        let p = self.0.authenticate_grpc(&r).await?;
        Ok(Response::new(
            self.0.redeliver_webhook(&p, &r.into_inner().id).await?,
        ))
    }
}
